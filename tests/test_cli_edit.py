"""`difflab edit`: a real edit of an MNIST digit, and one-line errors (exit status 2) for bad input."""

import numpy as np
import pytest
from PIL import Image

from difflab.cli import main


@pytest.fixture(scope="module")
def digit(tmp_path_factory):
    """A test-split MNIST digit (a 7) as a grayscale PNG."""
    from difflab.data import load, to_uint8

    images, labels = load("mnist", split="test")[0:1]
    assert int(labels[0]) == 7
    path = tmp_path_factory.mktemp("edit") / "digit.png"
    Image.fromarray(to_uint8(images)[0, 0].numpy()).save(path)
    return path


@pytest.mark.parametrize("method", ["edict", "sdedit"])
def test_edit_writes_input_reconstruction_and_edit(digit, tmp_path, capsys, method):
    out = tmp_path / "edited.png"
    args = ["edit", "--input", str(digit), "--to-label", "3", "--from-label", "7"]
    assert main([*args, "--method", method, "--steps", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"mnist: {method}, 3 steps" in printed and f"wrote {out}" in printed
    if method == "edict":  # exact: the reconstruction is the input up to float32 rounding
        error = float(printed.split("RMS error ")[1].split()[0])
        assert error < 1e-3
    image = np.asarray(Image.open(out).convert("L"))
    assert image.shape[1] > 3 * 140  # three enlarged panels side by side


def test_the_source_label_defaults_to_the_classifiers(digit, tmp_path, capsys):
    out = tmp_path / "edited.png"
    args = ["edit", "--input", str(digit), "--to-label", "1", "--method", "bdia", "--steps", "2"]
    assert main([*args, "--guidance", "1", "--out", str(out)]) == 0
    assert "label 7 (MNIST classifier) -> 1" in capsys.readouterr().out


def _write(path, array):
    Image.fromarray(array).save(path)
    return str(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--method", "edictt"], "unknown --method 'edictt'. Did you mean 'edict'"),
        (["--to-label", "10"], "--to-label 10 is outside mnist's classes 0-9"),
        (["--from-label", "-2"], "--from-label -2 is outside"),
        (["--steps", "1"], "--steps must be >= 2"),
        (["--strength", "0"], "--strength must be in (0, 1]"),
        (["--guidance", "-1"], "--guidance must be >= 0"),
        (["--model", "mnist9"], "unknown model 'mnist9'. Did you mean 'mnist'"),
        (["--model", "moons"], "makes vectors"),
        (["--schedule", "karas"], "unknown step grid 'karas'"),
        (["--out", "edited.jpg"], "--out must end in .png"),
    ],
)
def test_bad_options_are_one_line_errors(digit, capsys, change, message):
    args = ["edit", "--input", str(digit), "--to-label", "3", "--out", "edited.png", *change]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err


def test_bad_images_are_one_line_errors(tmp_path, capsys):
    cases = [
        (
            _write(tmp_path / "big.png", np.zeros((32, 32), np.uint8)),
            "is 32x32 pixels but mnist takes 28x28",
        ),
        (
            _write(
                tmp_path / "rgb.png",
                np.random.default_rng(0).integers(0, 255, (28, 28, 3), dtype=np.uint8),
            ),
            "color image",
        ),
        (str(tmp_path / "missing.png"), "does not exist"),
    ]
    (tmp_path / "text.png").write_text("not an image")
    cases.append((str(tmp_path / "text.png"), "cannot read --input"))
    for path, message in cases:
        assert (
            main(["edit", "--input", path, "--to-label", "3", "--out", str(tmp_path / "o.png")])
            == 2
        )
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err


def test_gray_stored_as_rgb_is_accepted(digit, tmp_path):
    from difflab.cli.edit import read_image

    gray = np.asarray(Image.open(digit))
    rgb = _write(tmp_path / "rgb.png", np.repeat(gray[..., None], 3, -1))
    a, b = read_image(str(digit), (1, 28, 28), "mnist"), read_image(rgb, (1, 28, 28), "mnist")
    assert a.shape == (1, 1, 28, 28) and bool((a == b).all())
    assert float(a.min()) == -1.0 and float(a.max()) == 1.0
