"""``auto``: the benchmark's choice per NFE budget, within the budget, runnable on any denoiser."""

import json

import pytest
import torch

from difflab import sampling
from difflab.sampling.auto import TABLE
from difflab.testing import random_mixture
from difflab.testing.checks import CountingDenoiser


def test_table_comes_from_the_benchmark():
    table = json.loads(TABLE.read_text())
    assert table["generated_by"].startswith("python benchmarks/samplers.py")
    assert table["entries"], "the benchmark chose nothing"
    for entry in table["entries"]:
        assert entry["sampler"] in sampling.available()
        assert not sampling.info(entry["sampler"]).stochastic


@pytest.mark.parametrize("nfe", [4, 5, 7, 10, 16, 50, 80])
def test_auto_stays_within_the_budget(nfe):
    choice = sampling.choose(nfe)
    assert choice.nfe <= nfe and choice.measured_at <= nfe
    mix = random_mixture(2, 3, seed=0)
    counter = CountingDenoiser(mix)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80
    out = sampling.auto(counter, x, nfe, 0.002, 80.0)
    assert counter.calls == choice.nfe <= nfe
    assert out.dtype == torch.float64 and torch.isfinite(out).all()


def test_more_budget_is_more_accurate():
    mix = random_mixture(2, 3, seed=0, scale=1.0, min_variance=0.05)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 80
    truth = mix.ode(x, 80.0, 0.0).x
    errors = [
        float((sampling.auto(mix, x, nfe, 0.002, 80.0) - truth).norm(dim=1).mean())
        for nfe in (5, 20)
    ]
    assert errors[1] < errors[0] / 4, errors


def test_too_small_a_budget_is_named():
    with pytest.raises(ValueError, match="NFE budget of at least"):
        sampling.choose(1)
