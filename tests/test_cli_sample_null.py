"""`difflab sample --labels none` (issue 22 item 6): a class-conditional model sampled without a
label, from the null class its label dropout trained, with no guidance to spend network calls on."""

import numpy as np
import pytest
from PIL import Image
from test_pretrained import save_tiny

from difflab import pretrained
from difflab.cli import main


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "image": save_tiny(root / "tiny"),
        "points": save_tiny(root / "pts", "points"),
        "no_dropout": save_tiny(root / "nodrop", label_dropout=0.0),
    }


def _sample(folder, *args):
    return main(["sample", "--model", str(folder), "--steps", "2", "--n", "4", *args])


def test_none_samples_the_null_class_unguided(folders, tmp_path, capsys):
    out = tmp_path / "s.npz"
    assert _sample(folders["image"], "--labels", "none", "--seed", "4", "--out", str(out)) == 0
    report = capsys.readouterr().out
    assert "4 samples, without a label (the null class)" in report
    assert "3 NFE" in report and "guidance" not in report  # one network call per step
    saved = np.load(out, allow_pickle=False)
    assert saved["labels"].tolist() == [-1] * 4
    model = pretrained.load(folders["image"])
    null = model.sample_uint8(4, [-1] * 4, steps=2, seed=4, guidance=1.0)[:, 0].numpy()
    labelled = model.sample_uint8(4, [0] * 4, steps=2, seed=4, guidance=1.0)[:, 0].numpy()
    assert np.abs(saved["images"].astype(int) - null.astype(int)).max() <= 1
    assert np.abs(saved["images"].astype(int) - labelled.astype(int)).max() > 1


def test_none_draws_a_square_grid_and_is_accepted_by_unconditional_models(folders, tmp_path):
    heights = {}
    for labels in ("none", "0"):
        out = tmp_path / f"{labels}.png"
        assert _sample(folders["image"], "--labels", labels, "--out", str(out)) == 0
        heights[labels] = Image.open(out).size[1]
    tile = 8 * 2 + 2  # image_grid: 2x enlarged 8-pixel tiles with 2 pixels between
    assert heights["none"] - heights["0"] == tile  # 2 x 2 tiles, not one labelled row of 4
    out = tmp_path / "pts.npz"
    assert _sample(folders["points"], "--labels", "none", "--out", str(out)) == 0
    assert np.load(out)["labels"].tolist() == [-1] * 4


@pytest.mark.parametrize(
    "kind, args, message",
    [
        (
            "no_dropout",
            [],
            "nodrop was trained with label_dropout 0, so its null class is untrained",
        ),
        ("image", ["--guidance", "2"], "--guidance 2 needs class labels: --labels none samples"),
    ],
)
def test_bad_input_is_one_line_with_status_2(kind, args, message, folders, capsys, tmp_path):
    out = str(tmp_path / "s.png")
    assert _sample(folders[kind], "--labels", "none", *args, "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("difflab sample: error: ") and message in err, err
