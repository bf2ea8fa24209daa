"""Optimized step grids (difflab.schedules.optimize) judged on the exact ring2d mixture."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from difflab import sampling
from difflab.schedules import optimize
from difflab.schedules.optimize import OptimizedGrid, golden_section, nelder_mead, optimize_family
from difflab.testing.gmm import ring2d

SIGMA_MIN, SIGMA_MAX = 0.01, 80.0


@functools.cache
def _setup() -> tuple:
    mixture = ring2d()
    g = torch.Generator().manual_seed(0)
    cal = SIGMA_MAX * torch.randn(128, 2, generator=g, dtype=torch.float64)
    return mixture, cal


@functools.cache
def _direct() -> OptimizedGrid:
    mixture, cal = _setup()
    return optimize(
        mixture, "dpmpp_2m", 6, cal, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, progress=False
    )


def _check_grid(sigmas: torch.Tensor, steps: int, free_last: bool = False) -> None:
    """steps + 1 float64 levels, strictly decreasing from sigma_max to 0; the last positive one is
    sigma_min, or within [sigma_min, sigma_max) when it is free."""
    assert sigmas.dtype == torch.float64 and sigmas.shape == (steps + 1,)
    assert bool((sigmas[1:] < sigmas[:-1]).all())
    assert float(sigmas[0]) == SIGMA_MAX and float(sigmas[-1]) == 0.0
    if free_last:
        assert SIGMA_MIN <= float(sigmas[-2]) < SIGMA_MAX
    else:
        assert float(sigmas[-2]) == SIGMA_MIN


def test_direct_beats_best_fixed_grid_on_held_out_noise() -> None:
    result = _direct()
    _check_grid(result.sigmas, 6, free_last=True)
    assert result.sampler == "dpmpp_2m" and result.nfe == 6 and result.method == "direct"
    best_held = min(held for _, held in result.fixed.values())
    print(
        f"\ndpmpp_2m 6 NFE held-out RMSE: optimized {result.held_out_error:.3e}, best fixed "
        f"({result.best_fixed}) {result.best_fixed_error[1]:.3e}, ratio {result.ratio:.3f}"
    )
    assert result.calibration_error <= result.best_fixed_error[0]
    assert result.held_out_error < best_held
    assert result.ratio < 0.7


def test_direct_is_reproducible() -> None:
    mixture, cal = _setup()
    runs = [
        optimize(
            mixture,
            "euler",
            5,
            cal[:32],
            sigma_min=SIGMA_MIN,
            sigma_max=SIGMA_MAX,
            seed=3,
            max_evals=40,
            progress=False,
        )
        for _ in range(2)
    ]
    _check_grid(runs[0].sigmas, 5, free_last=True)
    assert torch.equal(runs[0].sigmas, runs[1].sigmas)
    assert runs[0].held_out_error == runs[1].held_out_error
    fixed_last = optimize(
        mixture, "euler", 5, cal[:32], sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, seed=3,
        max_evals=20, free_last=False, progress=False,
    )  # fmt: skip
    _check_grid(fixed_last.sigmas, 5)
    assert fixed_last.calibration_error <= fixed_last.best_fixed_error[0]


def test_ays_grid_is_valid_and_reproducible() -> None:
    mixture, cal = _setup()
    runs = [
        optimize(
            mixture,
            "dpmpp_2m",
            6,
            cal[:32],
            sigma_min=SIGMA_MIN,
            sigma_max=SIGMA_MAX,
            method="ays",
            sweeps=2,
            candidates=8,
            progress=False,
        )
        for _ in range(2)
    ]
    _check_grid(runs[0].sigmas, 6)
    assert torch.equal(runs[0].sigmas, runs[1].sigmas)
    assert runs[0].params["klub"] > 0 and runs[0].method == "ays"


def test_heun_budget_and_family_search() -> None:
    mixture, cal = _setup()
    # heun: nfe(n) = 2n - 1, so 8 NFE buys 4 steps
    result = optimize_family(
        mixture, "heun", 8, cal[:32], sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, progress=False
    )
    _check_grid(result.sigmas, 4)
    assert 1.0 <= result.params["rho"] <= 20.0
    assert result.calibration_error <= result.fixed["karras"][0] * (1 + 1e-9)
    shifted = optimize_family(
        mixture, "euler", 4, cal[:32], sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
        family="exponential", progress=False,
    )  # fmt: skip
    _check_grid(shifted.sigmas, 4)
    assert shifted.calibration_error <= shifted.fixed["exponential"][0] * (1 + 1e-9)


def test_json_round_trip() -> None:
    result = _direct()
    back = OptimizedGrid.from_json(result.to_json())
    assert torch.equal(back.sigmas, result.sigmas)
    assert back.fixed == result.fixed and back.best_fixed == result.best_fixed
    assert back.held_out_error == result.held_out_error and back.ratio == result.ratio
    with pytest.raises(ValueError, match="lacks"):
        OptimizedGrid.from_json('{"sigmas": [1.0, 0.0]}')


def test_clear_errors() -> None:
    mixture, cal = _setup()
    kw = {"sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX, "progress": False}
    with pytest.raises(ValueError, match="too small"):
        optimize(mixture, "heun", 2, cal[:4], **kw)
    with pytest.raises(ValueError, match="too small"):
        optimize(mixture, "euler", 1, cal[:4], **kw)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        optimize(mixture, "euler", 4, cal[:4], sigma_min=80.0, sigma_max=80.0, progress=False)
    with pytest.raises(ValueError, match="unknown sampler 'eulr'"):
        optimize(mixture, "eulr", 4, cal[:4], **kw)
    with pytest.raises(ValueError, match="unknown optimization method"):
        optimize(mixture, "euler", 4, cal[:4], method="gradient", **kw)
    with pytest.raises(ValueError, match="unknown option for method"):
        optimize(mixture, "euler", 4, cal[:4], sweeps=2, **kw)
    with pytest.raises(ValueError, match="unknown grid family"):
        optimize_family(mixture, "euler", 4, cal[:4], family="beta", **kw)
    with pytest.raises(ValueError, match="chooses its own steps"):
        optimize(mixture, "adaptive", 4, cal[:4], **kw)
    with pytest.raises(ValueError, match="unknown error metric 'mse'"):
        optimize(mixture, "euler", 4, cal[:4], metric="mse", **kw)


def test_metrics_are_the_rms_of_all_errors_and_the_mean_of_per_sample_rms() -> None:
    """Both errors recomputed by hand from the sampler's endpoints against the exact flow; the
    grid fitted under each metric is scored by it, and the choice survives JSON."""
    mixture, cal = _setup()
    g = torch.Generator().manual_seed(1)
    held = SIGMA_MAX * torch.randn(64, 2, generator=g, dtype=torch.float64)
    exact = mixture.ode(held, SIGMA_MAX, 0.0).x
    ref = (mixture.ode(cal[:64], SIGMA_MAX, 0.0).x, exact)
    kw = {"sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX, "progress": False, "max_evals": 60}
    fits = {
        m: optimize(mixture, "euler", 4, cal[:64], metric=m, reference=ref, held_out=held, **kw)
        for m in ("rmse", "mean_rms")
    }
    for metric, fit in fits.items():
        per_sample = (sampling.get("euler")(mixture, held, fit.sigmas) - exact).square().mean(1)
        want = per_sample.mean().sqrt() if metric == "rmse" else per_sample.sqrt().mean()
        assert fit.metric == metric and OptimizedGrid.from_json(fit.to_json()).metric == metric
        assert fit.held_out_error == pytest.approx(float(want), rel=1e-9)
    assert fits["rmse"].held_out_error != pytest.approx(fits["mean_rms"].held_out_error, rel=1e-3)


def test_nelder_mead_and_golden_section_find_known_minima() -> None:
    """The self-contained searches on functions with known minima: Rosenbrock's valley in 2-D
    (minimum at (1, 1)), a rotated ill-conditioned quadratic in 6-D (the adaptive coefficients),
    and a parabola on an interval."""
    rosen = lambda z: (1 - z[0]) ** 2 + 100 * (z[1] - z[0] ** 2) ** 2  # noqa: E731
    z, value, evals = nelder_mead(rosen, np.array([-1.2, 1.0]), 0.5, 1000, 1e-8)
    assert np.allclose(z, [1.0, 1.0], atol=1e-5) and value < 1e-9 and evals <= 1000
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(6, 6)))
    h = q @ np.diag(np.logspace(0, 2, 6)) @ q.T
    target = np.linspace(-1, 1, 6)
    quad = lambda z: float((z - target) @ h @ (z - target))  # noqa: E731
    z, value, _ = nelder_mead(quad, np.zeros(6), 0.5, 3000, 1e-9)
    assert np.allclose(z, target, atol=1e-4)
    _, _, stopped = nelder_mead(quad, np.zeros(6), 0.5, 40, 1e-9)
    assert stopped <= 40 + 6  # a shrink may finish its n evaluations
    x, fx = golden_section(lambda x: (x - 0.3) ** 2 + 2, -1.0, 2.0, 40)
    assert abs(x - 0.3) < 1e-6 and abs(fx - 2) < 1e-12
