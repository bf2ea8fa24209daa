"""The command line on saved models: `difflab sample --model DIR`, `difflab models`, `difflab
convert`, and one-line errors with exit status 2 for every bad input (issue 9)."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from test_pretrained import save_tiny

from difflab import pretrained
from difflab.cli import main
from difflab.utils.weights import load_weights


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "image": save_tiny(root / "tiny"),
        "points": save_tiny(root / "pts", "points"),
        "vectors": save_tiny(root / "vec", "vectors"),
        "no_dropout": save_tiny(root / "nodrop", label_dropout=0.0),
    }


def _sample(folder, *args):
    return main(["sample", "--model", str(folder), "--steps", "2", *args])


def _one_line_error(capsys, command="sample"):
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"difflab {command}: error: "), err
    return err


def test_image_grid_has_one_row_per_label(folders, tmp_path, capsys):
    heights = {}
    for labels in ("0-2", "1"):
        out = tmp_path / f"{labels}.png"
        assert _sample(folders["image"], "--labels", labels, "--n", "6", "--out", str(out)) == 0
        report = capsys.readouterr().out
        assert "3 NFE" in report and "guidance 2 (6 network evaluations" in report
        assert " s (model loaded in " in report
        heights[labels] = Image.open(out).size[1]
    tile = 8 * 2 + 2  # image_grid: 2x enlarged 8-pixel tiles with 2 pixels between
    assert heights["0-2"] - heights["1"] == 2 * tile


def test_npz_holds_uint8_images_and_cycled_labels(folders, tmp_path, capsys):
    out = tmp_path / "s.npz"
    args = ["--labels", "0,2", "--n", "5", "--seed", "4", "--guidance", "1", "--out", str(out)]
    assert _sample(folders["image"], *args) == 0
    saved = np.load(out, allow_pickle=False)
    assert saved["images"].dtype == np.uint8 and saved["images"].shape == (5, 8, 8)
    assert saved["labels"].tolist() == [0, 2, 0, 2, 0]
    model = pretrained.load(folders["image"])
    expected = model.sample_uint8(5, [0, 2, 0, 2, 0], steps=2, seed=4, guidance=1.0)
    diff = np.abs(saved["images"].astype(int) - expected[:, 0].numpy().astype(int))
    assert diff.max() <= 1  # batch-size rounding may move a pixel across a level
    assert "labels 0,2" in capsys.readouterr().out


def test_points_make_a_scatter_plot_and_vectors_an_npz(folders, tmp_path):
    png = tmp_path / "pts.png"
    assert main(["sample", "--model", str(folders["points"]), "--out", str(png)]) == 0
    assert Image.open(png).format == "PNG"
    npz = tmp_path / "vec.npz"
    assert _sample(folders["vectors"], "--n", "4", "--out", str(npz)) == 0
    saved = np.load(npz)
    assert saved["samples"].shape == (4, 3) and saved["labels"].tolist() == [-1] * 4


def test_python_dash_m_samples_a_model_folder(folders, tmp_path):
    out = tmp_path / "m.npz"
    command = ["sample", "--model", str(folders["points"]), "--sampler", "euler", "--steps", "3"]
    done = subprocess.run(
        [sys.executable, "-m", "difflab", *command, "--n", "8", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "3 steps = 3 NFE" in done.stdout and np.load(out)["samples"].shape == (8, 2)


def test_models_in_the_environment_load_by_name(folders, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(pretrained.MODELS_ENV, str(folders["image"].parent))
    out = tmp_path / "a.npz"
    assert main(["sample", "--model", "tiny", "--n", "2", "--steps", "1", "--out", str(out)]) == 0
    assert main(["sample", "--model", "tinny", "--out", str(out)]) == 2
    assert "Did you mean 'tiny'" in _one_line_error(capsys)


@pytest.mark.parametrize(
    ("kind", "args", "message"),
    [
        ("image", ["--sampler", "dpmpp2m"], "unknown sampler 'dpmpp2m'. Did you mean 'dpmpp_2m'"),
        ("image", ["--schedule", "karas"], "unknown step grid 'karas'. Did you mean 'karras'"),
        ("image", ["--steps", "0"], "--steps must be >= 1, got 0"),
        ("image", ["--steps", "-3"], "--steps must be >= 1, got -3"),
        ("image", ["--n", "0"], "--n must be >= 1, got 0"),
        ("image", ["--n", "-5"], "--n must be >= 1, got -5"),
        ("image", ["--n", "many"], "argument --n: invalid int value: 'many'"),
        ("image", ["--batch-size", "0"], "--batch-size must be >= 1"),
        ("image", ["--seed", "-1"], "--seed must be >= 0"),
        ("image", ["--labels", "0-9"], "label 3 is outside tiny's classes 0-2"),
        ("image", ["--labels", "5"], "label 5 is outside tiny's classes 0-2"),
        ("image", ["--labels", "a-b"], "cannot read --labels 'a-b'"),
        ("image", ["--labels", "2-0"], "runs backwards"),
        ("image", ["--guidance", "-1"], "--guidance must be >= 0"),
        ("image", ["--guidance", "nan"], "--guidance must be >= 0"),
        ("points", ["--guidance", "2"], "needs a class-conditional model; pts is unconditional"),
        ("points", ["--labels", "0"], "pts is unconditional: it takes no --labels"),
        ("no_dropout", ["--guidance", "2"], "trained with label_dropout 0"),
        ("image", ["--out", "grid.jpg"], "--out must end in .png or .npz, got 'grid.jpg'"),
        ("image", ["--out", "missing/grid.png"], "folder missing does not exist"),
        ("image", ["--out", "."], "--out must end in .png or .npz"),
        ("vectors", ["--out", "v.png"], "a PNG needs images with 1 or 3 channels or 2-D points"),
        ("image", ["--device", "nodevice"], "unknown --device 'nodevice'"),
    ],
)
def test_bad_input_is_one_line_with_status_2(
    kind, args, message, folders, capsys, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert main(["sample", "--model", str(folders[kind]), "--n", "2", *args]) == 2
    assert message in _one_line_error(capsys)


def test_output_is_checked_before_any_sampling(folders, tmp_path, capsys, monkeypatch):
    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before checking the output path")

    monkeypatch.setattr(pretrained.Model, "generate", no_sampling)
    (tmp_path / "taken.png").mkdir()
    for out in (tmp_path / "nowhere" / "a.png", tmp_path / "taken.png"):
        assert _sample(folders["image"], "--out", str(out)) == 2
        assert "cannot write" in _one_line_error(capsys)


def test_unknown_models_and_broken_folders_are_named(folders, tmp_path, capsys):
    out = str(tmp_path / "a.png")
    assert main(["sample", "--model", "ring2", "--out", out]) == 2
    assert "unknown model 'ring2'. Did you mean 'ring2d'" in _one_line_error(capsys)
    assert main(["sample", "--model", str(tmp_path / "absent"), "--out", out]) == 2
    assert "does not exist" in _one_line_error(capsys)
    broken = tmp_path / "broken"
    broken.mkdir()
    torch.save({"w": torch.zeros(2)}, broken / "model.pt")
    assert main(["sample", "--model", str(broken), "--out", out]) == 2
    assert "difflab convert" in _one_line_error(capsys)
    assert main(["sample", "--model", "ring2d", "--labels", "1", "--out", out]) == 2
    assert "--labels needs a class-conditional saved model" in _one_line_error(capsys)


def test_models_lists_folders_with_their_facts(folders, tmp_path, capsys, monkeypatch):
    run = tmp_path / "runs" / "toy" / "model"
    save_tiny(run, "points")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(pretrained.MODELS_ENV, str(folders["image"].parent))
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:6] == ["name", "network", "shape", "classes", "parameters", "steps"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["toy"][1:4] == ["mlp", "2", "-"] and rows["toy"][-1] == "runs/toy/model"
    tiny = pretrained.load(folders["image"])
    assert rows["tiny"][1:4] == ["unet", "1x8x8", "3"] and rows["tiny"][6] == "7"
    assert rows["tiny"][4:6] == [f"{tiny.parameter_count / 1e3:.3g}", "k"]
    assert main(["models", "--dir", str(tmp_path / "runs" / "toy")]) == 0
    assert "toy" in capsys.readouterr().out
    assert main(["models", "--dir", str(tmp_path / "nothing")]) == 2
    assert "is not a folder" in _one_line_error(capsys, "models")


def test_convert_writes_safetensors(tmp_path, capsys):
    state = {"layer.weight": torch.randn(3, 2), "layer.bias": torch.zeros(3)}
    torch.save({"ema": state, "step": 5}, tmp_path / "ckpt.pt")
    out = tmp_path / "model.safetensors"
    assert main(["convert", str(tmp_path / "ckpt.pt"), str(out), "--key", "ema"]) == 0
    assert "2 tensors" in capsys.readouterr().out
    assert torch.equal(load_weights(out)["layer.weight"], state["layer.weight"])
    assert main(["convert", str(tmp_path / "ckpt.pt"), str(tmp_path / "x.bin")]) == 2
    assert "must end in .safetensors" in _one_line_error(capsys, "convert")
    assert main(["convert", str(tmp_path / "none.pt"), str(out)]) == 2
    assert "does not exist" in _one_line_error(capsys, "convert")
    assert main(["convert", str(tmp_path / "ckpt.pt"), str(out), "--key", "emma"]) == 2
    assert "Did you mean 'ema'" in _one_line_error(capsys, "convert")
    torch.save({"net": torch.nn.Linear(2, 2)}, tmp_path / "module.pt")
    assert main(["convert", str(tmp_path / "module.pt"), str(out)]) == 2
    assert "refuses to load it" in _one_line_error(capsys, "convert")
