"""The adaptive-step sampler: error control, NFE report, per-sample independence."""

import pytest
import torch

from difflab import sampling
from difflab.testing import random_mixture, ring2d
from difflab.testing.checks import CountingDenoiser, batch_invariance

GRID = [20.0, 0.01, 0.0]


def _errors(mix, tolerances):
    x = (
        torch.randn(64, mix.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        * 20
    )
    truth = mix.ode(x, 20.0, 0.0).x
    rows = []
    for tol in tolerances:
        stats = {}
        y = sampling.get("adaptive")(mix, x, GRID, rtol=tol, atol=tol, stats=stats)
        rows.append((float((y - truth).norm(dim=1).mean()), stats))
    return rows


def test_error_follows_the_tolerance():
    rows = _errors(ring2d(), [1e-3, 1e-4, 1e-5])
    errors = [e for e, _ in rows]
    nfes = [s["nfe"] for _, s in rows]
    assert errors[0] > 5 * errors[1] > 25 * errors[2], errors
    assert errors[2] < 1e-4
    assert nfes[0] < nfes[1] < nfes[2]


def test_stats_count_every_call():
    mix = random_mixture(2, 2, seed=0)
    counter = CountingDenoiser(mix)
    stats = {}
    x = torch.randn(8, 2, dtype=torch.float64) * 20
    sampling.get("adaptive")(counter, x, GRID, stats=stats)
    assert stats["nfe"] == counter.calls == 1 + 3 * stats["iterations"]
    assert stats["nfe_per_sample"].max() <= stats["nfe"]


def test_samples_are_independent_of_their_batch():
    assert batch_invariance(sampling.get("adaptive"), stochastic=False) == 0


def test_input_is_not_modified_and_dtype_kept():
    mix = random_mixture(2, 2, seed=0)
    x = torch.randn(4, 2, dtype=torch.float64) * 20
    before = x.clone()
    out = sampling.get("adaptive")(mix, x, GRID)
    assert torch.equal(x, before) and out.dtype == torch.float64


def test_per_sample_conditioning_is_subset():
    seen = []

    def denoiser(x, sigma, label):
        assert label.shape[0] == x.shape[0]
        seen.append(label.clone())
        return torch.zeros_like(x)

    sampling.get("adaptive")(
        denoiser, torch.randn(3, 2, dtype=torch.float64), GRID, cond={"label": torch.arange(3)}
    )
    assert all(len(s) <= 3 for s in seen)


def test_registry_and_errors():
    info = sampling.info("adaptive")
    with pytest.raises(ValueError, match="adaptively"):
        info.nfe(10)
    with pytest.raises(ValueError, match="positive sigma_min"):
        sampling.get("adaptive")(lambda x, s: x, torch.zeros(2, 2), [10.0, 0.0])
    with pytest.raises(RuntimeError, match="max_nfe"):
        sampling.get("adaptive")(
            ring2d(), torch.randn(4, 2, dtype=torch.float64) * 20, GRID, rtol=1e-9, max_nfe=50
        )
