"""Optimized grids fitted to a saved model, kept in its folder and used by name (a tiny random
class-conditional UNet; the shipped MNIST grids are checked for form only)."""

import json

import pytest
import torch
from test_pretrained import save_tiny

from difflab import pretrained, sampling
from difflab.cli import main
from difflab.pretrained import grids as saved
from difflab.schedules import OptimizedGrid


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def model(folder):
    return pretrained.load(folder)


@pytest.fixture(scope="module")
def calibration(model):
    return saved.calibrate(model, 6, seed=2, reference="heun", reference_steps=6, progress=False)


@pytest.fixture(scope="module")
def result(model, calibration):
    return saved.optimize_model(
        model, "dpmpp_2m", 4, calibration, seed=2, max_evals=12, progress=False
    )


def test_reference_is_the_models_own_guided_sampler(model, calibration):
    """The calibration noise, labels (cycling through the classes), default guidance and reference
    solve are exactly those of model.generate with the same seed."""
    assert calibration.sigma_min == 0.002 and calibration.sigma_max == 80.0
    assert torch.equal(calibration.cond["labels"], torch.arange(6) % 3)
    ref_cal, ref_held = calibration.references
    same = model.generate(6, sampler="heun", steps=6, schedule="karras", seed=2)
    assert torch.equal(ref_cal, same.x)
    held = model.generate(6, sampler="heun", steps=6, schedule="karras", seed=3)
    assert torch.equal(ref_held, held.x)
    unguided = saved.calibrate(model, 6, seed=2, guidance=1.0, reference="heun", reference_steps=6)
    assert not torch.equal(unguided.references[0], ref_cal)
    assert calibration.references[0] is ref_cal  # solved once, then kept


def test_optimized_grid_is_valid_and_no_worse_than_fixed(result, calibration):
    s = result.sigmas
    assert s.dtype == torch.float64 and len(s) == 5 and float(s[-1]) == 0.0
    assert bool((s[1:] < s[:-1]).all())
    assert float(s[0]) == calibration.sigma_max and float(s[-2]) == calibration.sigma_min
    assert result.calibration_error <= result.best_fixed_error[0]


def test_grid_saved_in_the_model_folder_is_used_by_name(model, folder, result, tmp_path):
    with pytest.raises(
        ValueError, match=r"tiny has no optimized grid optimized:dpmpp_2m:4 \(it has none"
    ):
        model.sample(2, schedule="optimized:dpmpp_2m:4")
    path = saved.save_grid(folder, result)
    assert path == folder / "schedules" / "dpmpp_2m_4.json"
    assert OptimizedGrid.from_json(path.read_text()).sigmas.tolist() == result.sigmas.tolist()
    assert saved.saved_grids(folder) == ["optimized:dpmpp_2m:4"]
    by_name = model.generate(3, schedule="optimized:dpmpp_2m:4", seed=5)
    assert by_name.options["sampler"] == "dpmpp_2m" and by_name.nfe == 4
    assert by_name.options["schedule"] == "optimized:dpmpp_2m:4"
    explicit = model.sample(3, sampler="dpmpp_2m", schedule=result.sigmas, seed=5)
    assert torch.equal(by_name.x, explicit)
    # an explicit sampler runs on the same grid; the step count must agree
    euler = model.generate(3, schedule="optimized:dpmpp_2m:4", sampler="euler", seed=5)
    assert torch.equal(euler.sigmas, result.sigmas.to(euler.sigmas))
    with pytest.raises(ValueError, match="has 4 steps, not 5"):
        model.sample(2, schedule="optimized:dpmpp_2m:4", steps=5)
    with pytest.raises(ValueError, match=r"it has optimized:dpmpp_2m:4; make one"):
        model.sample(2, schedule="optimized:dpmpp_2m:6")
    with pytest.raises(ValueError, match="optimized:SAMPLER:NFE"):
        model.sample(2, schedule="optimized:dpmpp_2m")
    (folder / "schedules" / "euler_3.json").write_text("{}")
    with pytest.raises(ValueError, match=r"cannot read the grid .*euler_3\.json"):
        model.sample(2, schedule="optimized:euler:3")
    (folder / "schedules" / "euler_3.json").unlink()


def test_cli_optimizes_into_the_folder_and_samples_by_name(folder, tmp_path, capsys):
    args = ["schedule", "optimize", "--model", str(folder), "--sampler", "euler", "--nfe", "3",
            "4", "--n", "4", "--reference", "heun", "--reference-steps", "5", "--max-evals", "8"]  # fmt: skip
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "direct euler" in captured.err  # the progress bar
    for nfe in (3, 4):
        assert f"euler at {nfe} NFE on tiny" in captured.out
        assert f"--schedule optimized:euler:{nfe}" in captured.out
        data = json.loads((folder / "schedules" / f"euler_{nfe}.json").read_text())
        assert data["sampler"] == "euler" and data["nfe"] == nfe and len(data["sigmas"]) == nfe + 1
    out = tmp_path / "s.npz"
    sample = ["sample", "--model", str(folder), "--n", "3", "--out", str(out)]
    assert main([*sample, "--schedule", "optimized:euler:3"]) == 0
    assert "euler on the optimized:euler:3 grid: 3 steps = 3 NFE" in capsys.readouterr().out
    assert main([*sample, "--schedule", "optimized:euler:5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "tiny has no optimized grid optimized:euler:5" in err and "optimized:euler:4" in err
    # --out writes elsewhere (a read-only or shipped model)
    grid = tmp_path / "g.json"
    assert main([*args, "--out", str(grid)]) == 2  # two budgets, one file
    assert "--out names one file" in capsys.readouterr().err
    assert main([*args[:8], "--out", str(grid), *args[9:]]) == 0
    assert OptimizedGrid.from_json(grid.read_text()).nfe == 3


def test_cli_refuses_an_unwritable_folder_before_any_work(folder, capsys, monkeypatch):
    import os

    monkeypatch.setattr(os, "access", lambda path, mode: False)
    monkeypatch.setattr(saved, "calibrate", lambda *a, **k: pytest.fail("calibrated first"))
    assert main(["schedule", "optimize", "--model", str(folder), "--nfe", "4"]) == 2
    assert "pass --out FILE.json" in capsys.readouterr().err


def test_shipped_grids_are_valid():
    """Grids shipped with the MNIST model: named as they are used, strictly decreasing within the
    model's noise range, better than the best fixed grid on held-out noise."""
    names = saved.saved_grids(pretrained.resolve("mnist"))
    assert "optimized:dpmpp_2m:8" in names
    for name in names:
        sampler, nfe = saved.parse_grid_name(name)
        path = saved.grid_path(pretrained.resolve("mnist"), sampler, nfe)
        grid = OptimizedGrid.from_json(path.read_text())
        s = grid.sigmas
        assert grid.sampler == sampler and grid.nfe == nfe
        assert sampling.info(sampler).nfe(len(s) - 1) <= nfe
        assert bool((s[1:] < s[:-1]).all()) and float(s[0]) == 80.0 and float(s[-1]) == 0
        assert 0.002 <= float(s[-2]) < 80.0  # the last level is free above sigma_min
        assert grid.held_out_error < grid.best_fixed_error[1]


def test_a_grid_from_sigma_inf_needs_a_finite_start(tmp_path):
    points = pretrained.load(save_tiny(tmp_path / "pts", "points"))
    with pytest.raises(ValueError, match="starts sampling at sigma = inf"):
        saved.calibrate(points, 4)
    calibration = saved.calibrate(points, 4, sigma_max=20.0, reference_steps=4, progress=False)
    assert calibration.sigma_max == 20.0 and calibration.cond == {}
    assert calibration.calibration.shape == (4, 2)
