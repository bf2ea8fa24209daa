"""Weak-to-strong diffusion (W2SD): the reflection operator judged against its exact composition and
its first-order expansion on exact Gaussian mixtures, its effect on the strong model's likelihood,
and the sampler wrapper's NFE, batch invariance, callbacks, conditioning and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from difflab import inversion, sampling
from difflab.guidance import W2SD, autoguidance, reflect
from difflab.testing import GaussianMixture, random_mixture
from difflab.testing.checks import CountingDenoiser, exponential_grid

FIXED_STEP = sorted(
    {sampling.info(n).name for n in sampling.available()} - {"adaptive"}
)  # every registered fixed-step sampler, aliases once


@pytest.fixture(scope="module")
def pair() -> tuple[GaussianMixture, GaussianMixture]:
    """A strong mixture (2-D, 4 full-covariance components) and its weak version: the same
    components with doubled covariances (a blurrier model of the same data)."""
    strong = random_mixture(2, 4, seed=3, scale=2.0, min_variance=0.05)
    weak = GaussianMixture(strong.weights, strong.means, strong.covariances * 2)
    return strong, weak


def start(n: int, sigma: float, seed: int = 0, dim: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=torch.float64) * sigma


# ---------------------------------------------------------------------- the reflection operator


def test_reflection_is_the_strong_ddim_step_then_the_weak_ddim_inversion(pair):
    strong, weak = pair
    x = start(16, 1.3)
    sigma, nxt = 1.3, 0.8
    # eps form, from the exact mixtures: x' = x - delta eps_s(x, s), x~ = x' + delta eps_w(x', s')
    down = x - (sigma - nxt) * strong.eps(x, sigma)
    exact = down + (sigma - nxt) * weak.eps(down, nxt)
    got = reflect(strong, weak, x, sigma, nxt)
    torch.testing.assert_close(got, exact, atol=1e-12, rtol=1e-12)
    # the same composition from difflab's euler/DDIM sampler and difflab.inversion's DDIM inversion
    stepped = sampling.get("euler")(strong, x, [sigma, nxt])
    back = inversion.invert(weak, stepped, [sigma, nxt], method="ddim").x
    torch.testing.assert_close(got, back, atol=1e-12, rtol=1e-12)


def test_reflection_is_a_step_up_the_log_density_ratio_to_first_order(pair):
    """x~ - x = delta sigma grad log(p_s / p_w)(x) + O(delta^2): error slope 2 in delta."""
    strong, weak = pair
    sigma = 1.0
    x = start(32, sigma, seed=1)
    first = sigma * (strong.score(x, sigma) - weak.score(x, sigma))
    deltas = [sigma * 2.0**-k for k in range(3, 9)]
    errors = []
    for delta in deltas:
        got = reflect(strong, weak, x, sigma, sigma - delta)
        errors.append(float((got - x - delta * first).norm(dim=1).max()))
    slope = np.polyfit(np.log(deltas), np.log(errors), 1)[0]
    assert 1.9 < slope < 2.1, (slope, errors)
    # Tweedie: the same first-order term is (delta / sigma)(D_s - D_w)
    d = (strong.denoise(x, sigma) - weak.denoise(x, sigma)) / sigma
    torch.testing.assert_close(d, first, atol=1e-12, rtol=1e-10)


def test_reflection_with_weak_equal_to_strong_is_the_identity_to_second_order(pair):
    strong, _ = pair
    x = start(32, 1.0, seed=2)
    moves = [
        float((reflect(strong, strong, x, 1.0, 1.0 - d) - x).norm(dim=1).max()) for d in (0.1, 0.05)
    ]
    assert moves[1] < moves[0] / 3.5  # DDIM inversion's drift is O(delta^2), not O(delta)


# ---------------------------------------------------------------------- the sampler wrapper


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "heun"])
def test_w2sd_moves_samples_to_where_the_strong_model_is_denser(pair, sampler):
    """Against a blurrier weak model, reflection raises the strong model's mean log-likelihood of
    the samples over plain sampling of the strong model; with the roles swapped it lowers it."""
    strong, weak = pair
    grid = exponential_grid(15, 20.0, 0.02, zero=True)
    x = start(1000, 20.0, seed=3)
    plain = sampling.get(sampler)(strong, x, grid)
    reflected = W2SD(weak, sampler)(strong, x, grid)
    swapped = W2SD(strong, sampler, strong=weak)(strong, x, grid)
    loglik = {
        k: float(strong.log_prob(v).mean())
        for k, v in {"plain": plain, "w2sd": reflected, "swapped": swapped}.items()
    }
    assert loglik["w2sd"] > loglik["plain"] + 0.1 > loglik["swapped"] + 0.2, loglik
    # no reflection is the inner sampler exactly
    torch.testing.assert_close(W2SD(weak, sampler, steps=0)(strong, x, grid), plain)


@pytest.mark.parametrize("depth", [1.0, 0.5])
def test_reflecting_every_step_converges_to_autoguidance_with_w_one_plus_depth(depth):
    """A reflection of depth d h before an Euler step of size h moves x by
    -h [eps_s + d (eps_s - eps_w)] + O(h^2): the Euler step of autoguidance with w = 1 + d, so the
    two samplers converge to the same flow, their difference O(h)."""
    strong = random_mixture(3, 3, seed=1, scale=1.0, min_variance=0.1)  # smooth: no mode switches
    weak = GaussianMixture(strong.weights, strong.means, strong.covariances * 2)
    x = start(64, 10.0, seed=5, dim=3)
    ns = (16, 32, 64)
    gaps = []
    for n in ns:
        grid = exponential_grid(n, 10.0, 0.05)  # ends at 0.05: every step is reflected
        reflected = W2SD(weak, "euler", depth=depth)(strong, x, grid)
        guided = sampling.get("euler")(autoguidance(strong, weak, 1 + depth), x, grid)
        gaps.append(float((reflected - guided).square().sum(1).mean().sqrt()))
    slope = np.polyfit(np.log(ns), np.log(gaps), 1)[0]
    assert -1.15 < slope < -0.8, (slope, gaps)
    unguided = sampling.get("euler")(strong, x, grid)
    assert gaps[-1] < float((reflected - unguided).square().sum(1).mean().sqrt()) / 5


def test_reflected_steps_follow_steps_interval_and_depth():
    grid = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5, 0.0], dtype=torch.float64)
    den = lambda x, s, **c: x  # noqa: E731
    assert W2SD(den).reflected(grid) == [(0, 8, 4), (1, 4, 2), (2, 2, 1), (3, 1, 0.5)]
    assert [i for i, *_ in W2SD(den, steps=2).reflected(grid)] == [0, 1]
    assert [i for i, *_ in W2SD(den, sigma_interval=(1.5, 5)).reflected(grid)] == [1, 2]
    assert W2SD(den, depth=0.5).reflected(grid)[-1] == (4, 0.5, 0.25)  # the last step too
    inf = torch.cat([torch.tensor([math.inf], dtype=torch.float64), grid])
    assert [i for i, *_ in W2SD(den).reflected(inf)] == [1, 2, 3, 4]  # never at sigma = inf


@pytest.mark.parametrize("sampler", FIXED_STEP)
def test_nfe_is_the_inner_samplers_plus_two_per_reflection(pair, sampler):
    strong, weak = pair
    stochastic = sampling.info(sampler).stochastic
    for grid in (
        exponential_grid(6, 10.0, 0.05, zero=True),
        torch.cat(
            [
                torch.tensor([math.inf], dtype=torch.float64),
                exponential_grid(5, 10.0, 0.05, zero=True),
            ]
        ),
    ):
        for steps in (None, 2):
            den, wk = CountingDenoiser(strong), CountingDenoiser(weak)
            method = W2SD(wk, sampler, steps=steps)
            x = start(3, 10.0) if math.isfinite(float(grid[0])) else start(3, 1.0)
            gens = sampling.generators(0, 3) if stochastic else None
            out = method(den, x, grid, generator=gens)
            reflections = len(method.reflected(grid))
            assert wk.calls == reflections and out.shape == x.shape
            assert den.calls + wk.calls == method.nfe(grid), (grid[0], steps)
            # a separate strong model takes the reflections' strong half
            den, wk, st = CountingDenoiser(strong), CountingDenoiser(weak), CountingDenoiser(strong)
            W2SD(wk, sampler, strong=st, steps=steps)(den, x, grid, generator=gens)
            assert st.calls == wk.calls == reflections
            assert den.calls == method.nfe(grid) - 2 * reflections


@pytest.mark.parametrize("sampler", ["ddim_eta", "dpmpp_2m_sde"])
def test_w2sd_is_batch_invariant_with_per_sample_generators(pair, sampler):
    strong, weak = pair
    grid = exponential_grid(6, 10.0, 0.05, zero=True)
    x = start(5, 10.0, seed=4)
    method = W2SD(weak, sampler, steps=4)
    gens = lambda idx: [torch.Generator().manual_seed(100 + i) for i in idx]  # noqa: E731
    together = method(strong, x, grid, generator=gens(range(5)))
    alone = torch.cat([method(strong, x[i : i + 1], grid, generator=gens([i])) for i in range(5)])
    torch.testing.assert_close(together, alone, atol=1e-12, rtol=0)
    again = method(strong, x, grid, generator=gens(range(5)))
    torch.testing.assert_close(again, together, atol=0, rtol=0)


def test_callback_indices_and_conditioning_reach_every_model(pair):
    strong, weak = pair
    labels = torch.tensor([0, 1, 2])
    seen = {"strong": [], "weak": []}

    def recording(name, mixture):
        def den(x, sigma, labels=None):
            seen[name].append(labels)
            return mixture(x, sigma)

        return den

    steps = []
    grid = exponential_grid(5, 10.0, 0.05, zero=True)
    W2SD(recording("weak", weak), "dpmpp_2m", steps=3)(
        recording("strong", strong),
        start(3, 10.0),
        grid,
        cond={"labels": labels},
        callback=lambda i, s, x, d: steps.append((i, s)),
    )
    assert steps == [(i, float(grid[i])) for i in range(6)]  # each step once, global indices
    assert len(seen["weak"]) == 3 and len(seen["strong"]) == 6 + 3
    assert all(v is labels for v in seen["weak"] + seen["strong"])


def test_bad_w2sd_settings_are_named(pair):
    strong, weak = pair
    with pytest.raises(ValueError, match="unknown sampler 'dpmpp_2n'"):
        W2SD(weak, "dpmpp_2n")
    with pytest.raises(ValueError, match="chooses its own steps"):
        W2SD(weak, "adaptive")
    with pytest.raises(ValueError, match="steps must be an integer >= 0"):
        W2SD(weak, steps=-1)
    with pytest.raises(ValueError, match=r"depth must be in \(0, 1\]"):
        W2SD(weak, depth=1.5)
    with pytest.raises(ValueError, match="0 <= lo < hi"):
        W2SD(weak, sigma_interval=(2.0, 1.0))
    with pytest.raises(ValueError, match="must be callable"):
        W2SD("mnist_small")
    with pytest.raises(ValueError, match="0 < sigma_next < sigma < inf"):
        reflect(strong, weak, start(2, 1.0), 1.0, 1.0)
    with pytest.raises(ValueError, match="unknown option for sampler 'euler'"):
        W2SD(weak, options={"eta": 1.0})(strong, start(2, 1.0), [1.0, 0.5, 0.0])


# ---------------------------------------------------------------------- saved models and the CLI


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from test_pretrained import save_tiny

    return save_tiny(tmp_path_factory.mktemp("models") / "tiny")


def test_cli_w2sd(tiny_model_dir, tmp_path, capsys):
    from difflab.cli import main

    tiny = str(tiny_model_dir)

    def sample(*extra):
        out = tmp_path / f"s{len(list(tmp_path.iterdir()))}.npz"
        base = ["sample", "--model", tiny, "--steps", "3", "--n", "6", "--sampler", "euler"]
        code = main([*base, *extra, "--out", str(out)])
        return code, (np.load(out)["images"] if code == 0 else None)

    bad = {
        ("--w2sd-steps", "2"): "--w2sd-steps needs --w2sd WEAK",
        ("--w2sd", tiny, "--w2sd-steps", "-1"): "--w2sd-steps must be >= 0",
        ("--w2sd", "moons"): "the weak model must share the model's data and labels",
    }
    for extra, message in bad.items():
        code, _ = sample(*extra)
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, (extra, err)
    _, plain = sample()
    _, none = sample("--w2sd", tiny, "--w2sd-steps", "0")
    assert (none == plain).all()
    capsys.readouterr()
    code, reflected = sample("--w2sd", tiny)  # the model as its own weak version: DDIM drift only
    out = capsys.readouterr().out
    assert code == 0 and reflected.shape == plain.shape and not (reflected == plain).all()
    assert "w2sd(euler)" in out and "3 steps = 5 NFE" in out, out
    assert "W2SD reflecting 2 steps" in out, out
