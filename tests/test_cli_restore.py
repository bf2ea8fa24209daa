"""`difflab restore`: a PNG of input | measurement | restoration per image, and one-line errors with
exit status 2 for every bad input, before any sampling."""

import numpy as np
import pytest
from PIL import Image
from test_pretrained import save_tiny

from difflab.cli import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random class-conditional model on 1 x 8 x 8 images (null class trained)."""
    return save_tiny(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def digit(tmp_path_factory):
    """An 8 x 8 grayscale PNG."""
    path = tmp_path_factory.mktemp("png") / "digit.png"
    pixels = np.zeros((8, 8), np.uint8)
    pixels[2:6, 3:5] = 255
    Image.fromarray(pixels, "L").save(path)
    return path


def _restore(model, *args):
    return main(["restore", "--model", str(model), "--steps", "2", *args])


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("difflab restore: error: "), err
    return err


@pytest.mark.parametrize(
    ("task", "method", "extra"),
    [
        ("inpaint", "ddrm", ["--mask", "half"]),
        ("superres", "dps", ["--factor", "2"]),
        ("deblur", "pigdm", []),
        ("inpaint", "smc", ["--mask", "random", "--particles", "3"]),
    ],
)
def test_restore_writes_three_columns(tiny, digit, tmp_path, capsys, task, method, extra):
    out = tmp_path / "r.png"
    args = ["--task", task, "--method", method, "--input", str(digit), "--out", str(out)]
    assert _restore(tiny, *args, *extra) == 0
    report = capsys.readouterr().out
    assert f"{method}, 2 NFE" in report and "PSNR" in report and str(out) in report
    width, _ = Image.open(out).size
    assert width == 3 * (8 * 3 + 2 + 2) + 4 * 10  # three 3x-enlarged 8-pixel columns, 10 px apart


def test_restore_mnist_test_images(tmp_path, capsys):
    out = tmp_path / "m.png"
    args = ["--task", "superres", "--index", "3", "--n", "2", "--steps", "1", "--out", str(out)]
    assert main(["restore", "--model", "mnist", *args]) == 0
    assert "2 image(s)" in capsys.readouterr().out
    _, height = Image.open(out).size
    assert height > 2 * 28 * 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "inpant"], "unknown task 'inpant'. Did you mean 'inpaint'?"),
        (["--task", "inpaint", "--method", "dsp"], "unknown method 'dsp'. Did you mean 'dps'?"),
        (
            ["--task", "inpaint", "--mask", "centre"],
            "unknown mask 'centre'. Did you mean 'center'?",
        ),
        (["--task", "superres", "--factor", "3"], "must be >= 1 and divide the image size 8 x 8"),
        (["--task", "inpaint", "--label", "7"], "--label 7 is outside tiny's classes 0-2"),
        (["--task", "inpaint", "--noise", "-1"], "--noise must be >= 0"),
        (["--task", "inpaint", "--out", "x.jpg"], "--out must end in .png"),
        (["--task", "inpaint", "--index", "2"], "give --input or --index/--n"),
    ],
)
def test_bad_options_are_one_line_errors(tiny, digit, tmp_path, capsys, args, message):
    out = ["--out", str(tmp_path / "e.png")] if "--out" not in args else []
    assert _restore(tiny, "--input", str(digit), *out, *args) == 2
    assert message in _one_line_error(capsys)
    assert not (tmp_path / "e.png").exists()


def test_bad_images_are_one_line_errors(tiny, tmp_path, capsys):
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((10, 8), np.uint8), "L").save(big)
    color = tmp_path / "color.png"
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb, "RGB").save(color)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png")
    out = str(tmp_path / "e.png")
    cases = [
        (big, "is 8 x 10 pixels but tiny takes 8 x 8"),
        (color, "is a color image but tiny takes grayscale images"),
        (junk, "cannot read --input"),
        (tmp_path / "missing.png", "does not exist"),
    ]
    for path, message in cases:
        assert _restore(tiny, "--task", "deblur", "--input", str(path), "--out", out) == 2
        assert message in _one_line_error(capsys)
    assert _restore(tiny, "--task", "deblur", "--out", out) == 2  # 8 x 8 is not MNIST
    assert "not MNIST digits: give --input" in _one_line_error(capsys)
