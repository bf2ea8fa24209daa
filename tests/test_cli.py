"""The command line: the main job, listings, and one-line errors with exit status 2."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from difflab.cli import main


def test_sample_writes_png(tmp_path, capsys):
    out = tmp_path / "ring.png"
    assert (
        main(["sample", "--model", "ring2d", "--steps", "8", "--n", "300", "--out", str(out)]) == 0
    )
    image = Image.open(out)
    assert image.format == "PNG" and image.size[0] > 600
    assert "8 NFE" in capsys.readouterr().out


def test_sample_writes_npz_and_is_reproducible(tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    for path in (a, b):
        assert (
            main(
                [
                    "sample",
                    "--model",
                    "stiff64",
                    "--steps",
                    "4",
                    "--n",
                    "8",
                    "--seed",
                    "3",
                    "--out",
                    str(path),
                ]
            )
            == 0
        )
    assert np.array_equal(np.load(a)["samples"], np.load(b)["samples"])
    assert np.load(a)["samples"].shape == (8, 64)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sampler", "dpmpp2m"], "unknown sampler 'dpmpp2m'"),
        (["--schedule", "karas"], "unknown step grid 'karas'"),
        (["--model", "mnist9"], "unknown model"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--out", "/nonexistent/dir/x.png"], "does not exist"),
        (["--out", "x.jpg"], "must end in .png or .npz"),
        (["--model", "stiff64"], "needs a 2-D model"),
    ],
)
def test_errors_are_one_line_with_status_2(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["sample", "--n", "10", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_listings(capsys):
    assert main(["samplers"]) == 0
    assert "dpmpp_2m" in capsys.readouterr().out
    assert main(["schedules"]) == 0
    assert "karras" in capsys.readouterr().out


def test_check_sampler_imports_any_function(capsys):
    assert main(["check-sampler", "difflab.sampling.samplers.ode:heun", "--steps", "16", "32"]) == 0
    assert "measured order" in capsys.readouterr().out
    assert main(["check-sampler", "nomodule:fn"]) == 2


def test_python_dash_m():
    done = subprocess.run(
        [sys.executable, "-m", "difflab", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "sample" in done.stdout


def test_written_files_are_complete_and_not_private(tmp_path):
    from difflab.utils.files import atomic_write_bytes

    path = tmp_path / "a.bin"
    old_mask = os.umask(0o022)
    try:
        atomic_write_bytes(path, b"old")
        atomic_write_bytes(path, b"new")
    finally:
        os.umask(old_mask)
    assert path.read_bytes() == b"new"
    assert path.stat().st_mode & 0o777 == 0o644  # as open() would make it, not mkstemp's 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]  # no temporary left behind


def test_schedule_optimize_then_sample_with_it(tmp_path, capsys):
    grid = tmp_path / "grid.json"
    args = [
        "schedule",
        "optimize",
        "--sampler",
        "euler",
        "--nfe",
        "4",
        "--n",
        "8",
        "--out",
        str(grid),
    ]
    assert main(args) == 0
    report = capsys.readouterr().out
    assert "optimized" in report and "karras" in report
    out = tmp_path / "s.png"
    assert (
        main(
            [
                "sample",
                "--sampler",
                "euler",
                "--schedule",
                str(grid),
                "--steps",
                "4",
                "--n",
                "50",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert out.exists()
    assert main(["sample", "--schedule", str(grid), "--steps", "5", "--out", str(out)]) == 2
    assert "has 4 steps" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{}")
    assert main(["sample", "--schedule", str(tmp_path / "bad.json"), "--out", str(out)]) == 2
    assert "cannot read the grid" in capsys.readouterr().err


def test_sample_reports_the_nfe_spent(tmp_path, capsys):
    out = str(tmp_path / "a.png")
    assert main(["sample", "--sampler", "heun", "--steps", "5", "--n", "50", "--out", out]) == 0
    assert "5 steps = 9 NFE" in capsys.readouterr().out
    assert main(["sample", "--sampler", "adaptive", "--steps", "3", "--n", "50", "--out", out]) == 0
    assert "NFE" in capsys.readouterr().out
