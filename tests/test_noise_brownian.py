"""The Brownian tree noise source (difflab.sampling.noise): its counter-based normals, the law of its
path (variances and covariances of W and of its increments), one path per seed whatever levels are
asked, per-sample seeds, and the "noise" option of the samplers that take it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from difflab import sampling
from difflab.sampling import noise
from difflab.testing import random_mixture
from difflab.testing.checks import exponential_grid

F64 = torch.float64


def tree(n: int, shape: tuple[int, ...] = (1,), seed: int = 0) -> noise.BrownianTree:
    return noise.BrownianTree(noise.brownian_seeds(sampling.generators(seed, n), n), shape)


# ------------------------------------------------------------------------- counter-based normals


def test_the_tensor_hash_is_splitmix64():
    # int64 products wrap modulo 2^64 and the shifts are logical: bit for bit the Python reference
    values = [0, 1, -1, -5, 2**62 - 1, -(2**63), 0x123456789ABCDEF, 2**63 - 1]
    ours = noise._mix(torch.tensor(values, dtype=torch.int64))
    expected = [noise._signed(noise._mix_int(v)) for v in values]
    assert ours.tolist() == expected
    # SplitMix64 seeded with 0 first outputs 0xE220A8397B1DCDAF (Steele et al. 2014)
    assert noise._mix_int(noise._GOLDEN) == 0xE220A8397B1DCDAF


def test_hashed_normals_are_standard_normal_and_independent():
    keys = noise.brownian_seeds(torch.Generator().manual_seed(0), 400)
    z = noise.hashed_normal(keys, [11, 12], 301, F64)  # [2 nodes, 400 keys, 301 counters]
    assert z.shape == (2, 400, 301)
    flat = z.flatten().numpy()
    assert abs(flat.mean()) < 5 / math.sqrt(flat.size) and abs(flat.var() - 1) < 0.02
    assert stats.kstest(flat, "norm").pvalue > 1e-3
    # across nodes, keys and counters (odd counters pair with even ones through Box-Muller)
    for a, b in ((z[0], z[1]), (z[:, :200], z[:, 200:]), (z[..., 0:300:2], z[..., 1:301:2])):
        r = np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1]
        assert abs(r) < 5 / math.sqrt(a.numel()), r
    # a fixed function of (key, node, counter): the same draws with fewer counters or keys
    again = noise.hashed_normal(keys[:7], [12], 5, F64)[0]
    assert torch.equal(again, z[1, :7, :5])


# ------------------------------------------------------------------------- the path


def test_variances_and_covariances_of_the_path():
    # 20000 independent paths: Var W(t) = t, Cov(W(s), W(t)) = min(s, t), increments over disjoint
    # intervals uncorrelated with variance = length, within 5 standard errors
    w = tree(20_000)
    times = [1e-3, 0.03, 0.7, 0.9, 1.0, 2.5, 3.3, 80.0, 1500.0]
    values = torch.stack([w.w(t)[:, 0] for t in times])  # [T, paths]
    cov = values @ values.T / values.shape[1]
    expected = torch.tensor([[min(s, t) for t in times] for s in times], dtype=F64)
    se = torch.sqrt(torch.tensor([[s * t + min(s, t) ** 2 for t in times] for s in times]))
    assert ((cov - expected).abs() < 5 * se / math.sqrt(values.shape[1])).all(), cov / expected
    for a, b, c in ((0.7, 0.9, 3.3), (0.03, 0.0301, 0.031), (2.5, 80.0, 1500.0)):
        first, second = w(b, a), w(c, b)  # normalized increments, high to low as samplers ask
        assert abs(float(first.var()) - 1) < 0.05 and abs(float(second.var()) - 1) < 0.05
        assert abs(float((first * second).mean())) < 0.04
    assert torch.equal(w.w(0.0), torch.zeros(20_000, 1, dtype=F64))


def test_the_path_is_a_fixed_function_of_the_seed():
    # grids that share levels see the same W there: a 2x finer grid (midpoints inserted) and a
    # fresh tree asked in another order, or for other levels first
    coarse = exponential_grid(8, 14.6, 0.03).tolist()
    fine = exponential_grid(16, 14.6, 0.03).tolist()
    fine[::2] = coarse
    first = tree(6, (3, 2))
    on_coarse = [first.w(s) for s in coarse]
    second = tree(6, (3, 2))
    on_fine = [second.w(s) for s in reversed(fine)][::-1]
    for k, s in enumerate(coarse):
        assert torch.equal(on_fine[2 * k], on_coarse[k]), s
    # the coarse increments are sums of the fine ones: one path, seen at two resolutions
    for k in range(8):
        step = on_coarse[k + 1] - on_coarse[k]
        halves = (on_fine[2 * k + 2] - on_fine[2 * k + 1]) + (on_fine[2 * k + 1] - on_fine[2 * k])
        torch.testing.assert_close(step, halves, rtol=0, atol=1e-14)
    assert not torch.equal(tree(6, (3, 2), seed=1).w(1.3), first.w(1.3))


def test_per_sample_seeds():
    # sample i's path depends on (seed, i) only: the same in a batch of 5 and alone
    gens = sampling.generators(3, 5)
    together = noise.BrownianTree(noise.brownian_seeds(gens, 5), (4,))
    for i in range(5):
        alone = noise.BrownianTree(noise.brownian_seeds([sampling.generators(3, 5)[i]], 1), (4,))
        for t in (0.5, 2.0, 9.7):
            assert torch.equal(alone.w(t)[0], together.w(t)[i])


def test_the_noise_source():
    x = torch.zeros(3, 2, dtype=torch.float32)
    draw = sampling.noise_source(x, sampling.generators(0, 3), "brownian")
    z = draw(2.0, 1.0)
    assert z.dtype == torch.float32 and z.shape == (3, 2)
    with pytest.raises(ValueError, match="increment"):
        draw()
    with pytest.raises(ValueError, match="unknown noise 'pink'"):
        sampling.noise_source(x, None, "pink")
    with pytest.raises(ValueError, match="got 2 generators for a batch of 3"):
        sampling.noise_source(x, sampling.generators(0, 2), "brownian")
    with pytest.raises(ValueError, match="finite t >= 0"):
        tree(2).w(-1.0)


# ------------------------------------------------------------------------- the samplers' option

BROWNIAN = [n for n in sampling.available() if "brownian" in sampling.info(n).noises]


def test_which_samplers_take_brownian_noise():
    names = {sampling.info(n).name for n in BROWNIAN}
    assert names == {
        "ddim_eta", "er_sde", "sa_solver", "dpmpp_2s_ancestral", "dpm_2_ancestral",
        "dpmpp_2m_sde", "dpmpp_3m_sde", "dpmpp_sde", "seeds_2", "seeds_3",
        "res_multistep_ancestral",
    }  # fmt: skip
    # re-noising upwards (EDM's churn, Restart, consistency sampling) is no path increment
    for name in ("edm", "restart", "consistency"):
        with pytest.raises(ValueError, match="unknown option"):
            sampling.get(name)(lambda x, s: x, torch.zeros(2, 1), [2.0, 1.0, 0.0], noise="brownian")
    assert sampling.info("dpmpp_sde").noises[0] == "brownian"
    assert all(sampling.info(n).noises[0] == "gaussian" for n in names - {"dpmpp_sde"})


@pytest.mark.parametrize("name", sorted({sampling.info(n).name for n in BROWNIAN}))
def test_brownian_option(name):
    mix = random_mixture(2, 2, seed=0)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=F64) * 10
    grid = exponential_grid(6, 10.0, 0.05, zero=True)
    sampler = sampling.get(name)
    default = sampler(mix, x, grid, generator=sampling.generators(1, 5))
    explicit = sampler(
        mix, x, grid, generator=sampling.generators(1, 5), noise=sampling.info(name).noises[0]
    )
    assert torch.equal(default, explicit)  # the default is unchanged
    runs = [sampler(mix, x, grid, generator=sampling.generators(1, 5), noise="brownian")]
    runs += [sampler(mix, x[i : i + 1], grid, generator=sampling.generators(1, 5)[i : i + 1],
                     noise="brownian") for i in range(5)]  # fmt: skip
    assert bool(torch.isfinite(runs[0]).all())
    assert torch.equal(runs[0], torch.cat(runs[1:]))  # batch-invariant
    other = "gaussian" if name == "dpmpp_sde" else "brownian"
    assert not torch.equal(
        default, sampler(mix, x, grid, generator=sampling.generators(1, 5), noise=other)
    )
    with pytest.raises(ValueError, match="unknown noise 'pink'; valid: "):
        sampler(mix, x, grid, noise="pink")
