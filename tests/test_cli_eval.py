"""`difflab eval` and `difflab bench-nfe`: metrics of saved samples, samplers compared at equal NFE,
and one-line errors (exit status 2) for bad input before any work."""

import json

import numpy as np
import pytest
from PIL import Image
from test_evaluation import save_tiny_mnist

from difflab import data
from difflab.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_mnist(tmp_path_factory.mktemp("models") / "tiny_mnist")


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory):
    """200 MNIST test digits with their labels, saved as `difflab sample` saves samples."""
    test = data.load("mnist", "test")
    path = tmp_path_factory.mktemp("samples") / "digits.npz"
    images = data.to_uint8(test.x[:200])[:, 0].numpy()
    np.savez(path, images=images, labels=test.labels[:200].numpy())
    return path


def _one_line_error(capsys, command):
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"difflab {command}: error: "), err
    return err


def test_eval_prints_and_writes_the_metrics(digits_npz, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    args = ["eval", "--samples", str(digits_npz), "--reference", "mnist-train", "--n", "200"]
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    record = json.loads(out.read_text())
    assert record["count"] == 200 and record["reference"] == "mnist-train"
    metrics = record["metrics"]
    assert metrics["class_accuracy"] > 0.95 and 0 < metrics["frechet_distance"] < 50
    for name in metrics:
        assert name in printed


def test_eval_errors_are_one_line(digits_npz, tmp_path, capsys):
    assert main(["eval", "--samples", str(tmp_path / "missing.npz")]) == 2
    assert "does not exist" in _one_line_error(capsys, "eval")
    points = tmp_path / "points.npz"
    np.savez(points, samples=np.zeros((10, 2), np.float32), labels=np.full(10, -1))
    assert main(["eval", "--samples", str(points)]) == 2  # against the default, MNIST
    assert "moons-test" in _one_line_error(capsys, "eval")
    assert main(["eval", "--samples", str(digits_npz), "--reference", "mnsit-test"]) == 2
    assert "Did you mean 'mnist'" in _one_line_error(capsys, "eval")
    assert main(["eval", "--samples", str(digits_npz), "--out", str(tmp_path / "m.txt")]) == 2
    assert ".json" in _one_line_error(capsys, "eval")


def test_bench_nfe_prints_a_table_and_writes_a_plot(model_dir, tmp_path, capsys):
    out = tmp_path / "nfe.png"
    args = ["--samplers", "euler", "heun", "--nfe", "3", "4", "--n", "6", "--reference-n", "200"]
    assert main(["bench-nfe", "--model", str(model_dir), *args, "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["sampler", "NFE", "steps", "FD", "seconds"]
    assert [line.split()[:3] for line in lines[2:5]] == [
        ["euler", "3", "3"],
        ["euler", "4", "4"],
        ["heun", "3", "2"],
    ]
    assert lines[5] == f"wrote {out}"
    with Image.open(out) as image:
        image.verify()


def test_bench_nfe_errors_are_one_line_and_write_nothing(model_dir, tmp_path, capsys):
    out = tmp_path / "nfe.png"
    model = ["bench-nfe", "--model", str(model_dir), "--n", "4", "--out", str(out)]
    assert main([*model, "--samplers", "eulr"]) == 2
    assert "Did you mean 'euler'" in _one_line_error(capsys, "bench-nfe")
    assert main([*model, "--nfe", "0"]) == 2
    assert "--nfe must be >= 1" in _one_line_error(capsys, "bench-nfe")
    assert main([*model, "--samplers", "heun", "--nfe", "2", "4"]) == 2
    assert "try other --nfe" in _one_line_error(capsys, "bench-nfe")
    assert main([*model, "--samplers", "adaptive"]) == 2
    assert "adaptive" in _one_line_error(capsys, "bench-nfe")
    assert main(["bench-nfe", "--model", "no-such-model", "--out", str(out)]) == 2
    assert "unknown model" in _one_line_error(capsys, "bench-nfe")
    assert main([*model[:-1], str(tmp_path / "nfe.jpg")]) == 2
    assert ".png" in _one_line_error(capsys, "bench-nfe")
    assert list(tmp_path.iterdir()) == []
