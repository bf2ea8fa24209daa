"""Guidance as denoiser transformations, judged against exact labelled Gaussian mixtures: every guided
denoiser equals its closed form, computed here independently (scores of tilted densities by autograd
of exact log-densities, exact conditional mixtures, exact tilted Gaussians)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from difflab import models, sampling
from difflab.core.parameterization import EDMPrecond
from difflab.guidance import (
    APG,
    CFG,
    CFGZeroStar,
    autoguidance,
    cfg_pp,
    classifier_free,
    classifier_guidance,
    composable,
    renoise,
    reward_guidance,
)
from difflab.models.attention import attention_layers, identity_attention, perturbed_attention
from difflab.testing import GaussianMixture, gaussian, random_mixture

LABELS = torch.tensor([0, 0, 1, 1, 2, 2])


@pytest.fixture(scope="module")
def gmm() -> GaussianMixture:
    """3 classes of 2 full-covariance components each, in 3-D."""
    m = random_mixture(3, 6, seed=1, scale=1.5)
    return GaussianMixture(m.weights, m.means, m.covariances, labels=LABELS)


def labelled(gmm: GaussianMixture):
    """The exact conditional denoiser D(x, sigma, labels): E[x0 | x, c], and E[x0 | x] for -1/None."""
    parts = {c: gmm.condition(c) for c in range(3)}

    def den(x, sigma, labels=None):
        out = gmm.denoise(x, sigma)
        if labels is None:
            return out
        for c, part in parts.items():
            out = torch.where((labels == c)[:, None], part.denoise(x, sigma), out)
        return out

    return den


def exact_log_classifier(gmm: GaussianMixture):
    """log p(c | x, sigma) = log pi_c + log p_c(x) - log p(x) for every class: [B, 3]."""
    parts = [gmm.condition(c) for c in range(3)]
    log_pi = [math.log(float(gmm.weights[c == LABELS].sum())) for c in range(3)]

    def clf(x, sigma):
        joint = torch.stack([lp + p.log_prob(x, sigma) for lp, p in zip(log_pi, parts)], 1)
        return joint - gmm.log_prob(x, sigma)[:, None]

    return clf


def tilted_denoiser(log_density, x, sigma):
    """x + sigma^2 grad log q(x) by autograd: the denoiser of the (unnormalised) density q."""
    xg = x.detach().double().requires_grad_(True)
    (grad,) = torch.autograd.grad(log_density(xg).sum(), xg)
    s = torch.as_tensor(sigma, dtype=torch.float64)
    return (xg + (s[:, None] if s.ndim else s) ** 2 * grad).detach()


def points(n=8, seed=0, dim=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=torch.float64) * 1.5


SIGMA = torch.tensor([0.2, 0.5, 1.0, 2.0, 0.7, 3.0, 0.3, 1.5], dtype=torch.float64)
CLASS = torch.tensor([0, 1, 2, 0, 1, 2, 2, 1])


def velocity(d, x, sigma):
    """The flow velocity u = eps - x0 = (x - D) / sigma - D, computed directly."""
    return (x - d) / sigma[:, None] - d


# ---------------------------------------------------------------------- classifier-free guidance


@pytest.mark.parametrize("w", [0.0, 1.0, 2.5])
def test_cfg_is_the_denoiser_of_the_tilted_density(gmm, w):
    """D_u + w (D_c - D_u) = x + sigma^2 grad log [p(x) p(c | x)^w] (exact mixtures, autograd)."""
    x = points()
    guided = classifier_free(labelled(gmm), w)(x, SIGMA, labels=CLASS)
    parts = [gmm.condition(c) for c in range(3)]

    def log_q(xg):
        log_c = torch.stack([p.log_prob(xg, SIGMA) for p in parts], 1).gather(1, CLASS[:, None])
        return (1 - w) * gmm.log_prob(xg, SIGMA) + w * log_c[:, 0]

    torch.testing.assert_close(guided, tilted_denoiser(log_q, x, SIGMA), atol=1e-9, rtol=1e-9)
    d_c = labelled(gmm)(x, SIGMA, CLASS)
    d_u = gmm.denoise(x, SIGMA)
    torch.testing.assert_close(guided, d_u + w * (d_c - d_u))


def test_cfg_interval_off_is_unguided_and_skips_the_unconditional_branch(gmm):
    calls = []

    def counting(x, sigma, labels=None):
        calls.append(len(x))
        return labelled(gmm)(x, sigma, labels)

    x = points()
    guided = classifier_free(counting, 3.0, sigma_interval=(5.0, 10.0))
    out = guided(x, 1.0, labels=CLASS)
    torch.testing.assert_close(out, labelled(gmm)(x, 1.0, CLASS))
    assert calls == [8]  # one conditional batch, no unconditional evaluation
    calls.clear()
    inside = guided(x, 6.0, labels=CLASS)
    torch.testing.assert_close(inside, classifier_free(labelled(gmm), 3.0)(x, 6.0, labels=CLASS))
    assert calls == [16]  # both branches in one batch
    # a noise level per sample: guided where inside, the conditional denoiser elsewhere
    sigma = torch.tensor([1.0, 6.0] * 4, dtype=torch.float64)
    mixed = guided(x, sigma, labels=CLASS)
    full = classifier_free(labelled(gmm), 3.0)(x, sigma, labels=CLASS)
    cond = labelled(gmm)(x, sigma, CLASS)
    torch.testing.assert_close(mixed[1::2], full[1::2])
    torch.testing.assert_close(mixed[::2], cond[::2])


def test_rescale_phi_zero_is_cfg_and_phi_one_matches_the_conditional_std(gmm):
    x = points()
    den = labelled(gmm)
    plain = classifier_free(den, 4.0)(x, SIGMA, labels=CLASS)
    torch.testing.assert_close(
        classifier_free(den, CFG(4.0, rescale=0.0))(x, SIGMA, labels=CLASS), plain
    )
    d_c = den(x, SIGMA, CLASS)
    full = classifier_free(den, CFG(4.0, rescale=1.0))(x, SIGMA, labels=CLASS)
    torch.testing.assert_close(full.std(1), d_c.std(1))  # x0 space: std(G) = std(D_c)
    torch.testing.assert_close(full / plain, (d_c.std(1) / plain.std(1))[:, None].expand(-1, 3))
    half = classifier_free(den, CFG(4.0, rescale=0.5))(x, SIGMA, labels=CLASS)
    torch.testing.assert_close(half, (full + plain) / 2)
    # in velocity space the velocity's std is matched instead
    vel = classifier_free(den, CFG(4.0, rescale=1.0, space="velocity"))(x, SIGMA, labels=CLASS)
    torch.testing.assert_close(velocity(vel, x, SIGMA).std(1), velocity(d_c, x, SIGMA).std(1))
    assert not torch.allclose(vel, full)


# ---------------------------------------------------------------------- APG and CFG-Zero*


def test_apg_reduces_to_cfg_and_projects(gmm):
    x = points()
    den = labelled(gmm)
    d_c, d_u = den(x, SIGMA, CLASS), gmm.denoise(x, SIGMA)
    plain = classifier_free(den, 3.0)(x, SIGMA, labels=CLASS)
    torch.testing.assert_close(
        classifier_free(den, APG(3.0, eta=1.0))(x, SIGMA, labels=CLASS), plain
    )
    ortho = classifier_free(den, APG(3.0, eta=0.0))(x, SIGMA, labels=CLASS)
    update = (ortho - d_c) / 2  # (w - 1) delta_perp
    torch.testing.assert_close((update * d_c).sum(1), torch.zeros(8, dtype=torch.float64))
    # delta = delta_perp + delta_par with delta_par parallel to D_c
    rest = (d_c - d_u) - update
    torch.testing.assert_close(
        rest, (rest * d_c).sum(1, keepdim=True) / d_c.square().sum(1, keepdim=True) * d_c
    )
    clipped = classifier_free(den, APG(3.0, eta=1.0, norm_threshold=0.1))(x, SIGMA, labels=CLASS)
    delta = d_c - d_u
    expect = d_c + 2 * delta * torch.clamp(0.1 / delta.norm(dim=1, keepdim=True), max=1)
    torch.testing.assert_close(clipped, expect)


def test_apg_momentum_runs_along_one_trajectory_and_restarts(gmm):
    x = points()
    den = labelled(gmm)
    beta = -0.5
    guided = classifier_free(den, APG(2.0, eta=1.0, momentum=beta))
    first = guided(x, 2.0, labels=CLASS)
    second = guided(x, 1.0, labels=CLASS)
    d1 = den(x, 2.0, CLASS) - gmm.denoise(x, 2.0)
    d2 = den(x, 1.0, CLASS) - gmm.denoise(x, 1.0) + beta * d1
    torch.testing.assert_close(first, den(x, 2.0, CLASS) + d1)
    torch.testing.assert_close(second, den(x, 1.0, CLASS) + d2)
    # a new trajectory (sigma rises again) starts without momentum: the same outputs again
    torch.testing.assert_close(guided(x, 2.0, labels=CLASS), first)
    torch.testing.assert_close(guided(x, 1.0, labels=CLASS), second)


def test_cfg_zero_star_closed_form_in_velocity_space(gmm):
    x = points()
    den = labelled(gmm)
    w = 2.5
    u_c, u_u = velocity(den(x, SIGMA, CLASS), x, SIGMA), velocity(gmm.denoise(x, SIGMA), x, SIGMA)
    s_star = (u_c * u_u).sum(1, keepdim=True) / u_u.square().sum(1, keepdim=True)
    u = s_star * u_u + w * (u_c - s_star * u_u)
    expect = (x - SIGMA[:, None] * u) / (1 + SIGMA[:, None])  # x - sigma u = (1 + sigma) x0
    got = classifier_free(den, CFGZeroStar(w))(x, SIGMA, labels=CLASS)
    torch.testing.assert_close(got, expect)
    # zero-init: zero velocity (x_t stays) at sigma >= zero_init, D = x / (1 + sigma)
    zeroed = classifier_free(den, CFGZeroStar(w, zero_init=1.5))(x, SIGMA, labels=CLASS)
    high = SIGMA >= 1.5
    torch.testing.assert_close(zeroed[high], x[high] / (1 + SIGMA[high, None]))
    torch.testing.assert_close(zeroed[~high], expect[~high])
    torch.testing.assert_close(
        velocity(zeroed, x, SIGMA)[high], torch.zeros(3, 3, dtype=torch.float64)
    )


# ---------------------------------------------------------------------- composition


def test_composable_and_not_are_the_tilted_density(gmm):
    """D_u + sum_i w_i (D_ci - D_u) = x + sigma^2 grad log [p(x) prod_i p(c_i | x)^w_i]."""
    x = points()
    den = labelled(gmm)
    pairs = torch.stack([CLASS, (CLASS + 1) % 3], 1)
    weights = [2.0, -0.7]  # c_0 AND NOT c_1
    got = composable(den, weights)(x, SIGMA, labels=pairs)
    parts = [gmm.condition(c) for c in range(3)]

    def log_q(xg):
        log_c = torch.stack([p.log_prob(xg, SIGMA) for p in parts], 1)
        log_u = gmm.log_prob(xg, SIGMA)
        return log_u + sum(
            w * (log_c.gather(1, pairs[:, i : i + 1])[:, 0] - log_u) for i, w in enumerate(weights)
        )

    torch.testing.assert_close(got, tilted_denoiser(log_q, x, SIGMA), atol=1e-9, rtol=1e-9)
    # algebra: order does not matter, one condition is CFG, zero weights are unconditional
    swapped = composable(den, weights[::-1])(x, SIGMA, labels=pairs.flip(1))
    torch.testing.assert_close(swapped, got)
    one = composable(den, [2.0])(x, SIGMA, labels=CLASS[:, None])
    torch.testing.assert_close(one, classifier_free(den, 2.0)(x, SIGMA, labels=CLASS))
    torch.testing.assert_close(
        composable(den, [0.0, 0.0])(x, SIGMA, labels=pairs), gmm.denoise(x, SIGMA)
    )
    # NOT c pushes away from c: w = -1 on one condition is 2 D_u - D_c
    torch.testing.assert_close(
        composable(den, [-1.0])(x, SIGMA, labels=CLASS[:, None]),
        2 * gmm.denoise(x, SIGMA) - den(x, SIGMA, CLASS),
    )
    with pytest.raises(ValueError, match=r"labels \[B, 2\]"):
        composable(den, weights)(x, SIGMA, labels=CLASS)


# ---------------------------------------------------------------------- gradient guidance


def test_classifier_guidance_with_the_exact_classifier_is_the_exact_conditional(gmm):
    """D + sigma^2 grad log p(c | x, sigma) = E[x0 | x, c]; at scale s it equals CFG with w = s."""
    x = points()
    guided = classifier_guidance(gmm.denoise, exact_log_classifier(gmm), 1.0)
    torch.testing.assert_close(guided(x, SIGMA, labels=CLASS), labelled(gmm)(x, SIGMA, CLASS))
    strong = classifier_guidance(gmm.denoise, exact_log_classifier(gmm), 3.0)
    torch.testing.assert_close(
        strong(x, SIGMA, labels=CLASS), classifier_free(labelled(gmm), 3.0)(x, SIGMA, labels=CLASS)
    )
    # at sigma = inf x is the unit noise: no gradient term, the prior mean
    at_inf = guided(x, float("inf"), labels=CLASS)
    torch.testing.assert_close(at_inf, gmm.mean.expand(8, 3))


def test_reward_guidance_with_a_linear_reward_is_the_exact_tilted_gaussian():
    """p(x0) exp(lam a.x0) of N(m, C) is N(m + lam C a, C): exact with the Jacobian through D."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(3, 3, generator=g, dtype=torch.float64)
    cov = q @ q.T + 0.1 * torch.eye(3, dtype=torch.float64)
    mean = torch.tensor([0.5, -1.0, 0.2], dtype=torch.float64)
    a = torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64)
    lam = 0.7
    prior, tilted = gaussian(mean, cov), gaussian(mean + lam * cov @ a, cov)
    x = points()
    got = reward_guidance(prior.denoise, lambda x0: x0 @ a, lam)(x, SIGMA)
    torch.testing.assert_close(got, tilted.denoise(x, SIGMA))
    cheap = reward_guidance(prior.denoise, lambda x0: x0 @ a, lam, jacobian=False)(x, SIGMA)
    torch.testing.assert_close(cheap, prior.denoise(x, SIGMA) + lam * SIGMA[:, None] ** 2 * a)
    with pytest.raises(ValueError, match="one value per sample"):
        reward_guidance(prior.denoise, lambda x0: x0, lam)(x, SIGMA)


# ---------------------------------------------------------------------- guidance by a weaker model


def test_autoguidance_is_the_score_of_good_over_weak(gmm):
    x = points()
    good = labelled(gmm)
    torch.testing.assert_close(
        autoguidance(good, good, 3.0)(x, SIGMA, labels=CLASS), good(x, SIGMA, CLASS)
    )
    # a weak model: the same mixture with doubled covariances; D_w is the denoiser of p_good^w p_weak^(1-w)
    weak_gmm = GaussianMixture(gmm.weights, gmm.means, 2 * gmm.covariances, labels=LABELS)
    w = 2.0
    got = autoguidance(gmm.denoise, weak_gmm.denoise, w)(x, SIGMA)
    expect = tilted_denoiser(
        lambda xg: w * gmm.log_prob(xg, SIGMA) + (1 - w) * weak_gmm.log_prob(xg, SIGMA), x, SIGMA
    )
    torch.testing.assert_close(got, expect, atol=1e-9, rtol=1e-9)


TINY = {
    "unet": {
        "type": "unet",
        "in_channels": 2,
        "image_size": 8,
        "channels": 16,
        "channel_mult": [1, 2],
        "num_res_blocks": 1,
        "attention_resolutions": [4],
        "head_channels": 8,
        "num_classes": 3,
    },
    "dit": {
        "type": "dit",
        "in_channels": 2,
        "image_size": 8,
        "patch_size": 2,
        "hidden_size": 32,
        "depth": 2,
        "heads": 2,
        "num_classes": 3,
        "position_embedding": "learned",
    },
}


def tiny_denoiser(kind: str) -> EDMPrecond:
    torch.manual_seed(0)
    net = models.build(TINY[kind])
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():  # off the (partly zero) initialisation, as training would
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return EDMPrecond(net).eval()


@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_perturbed_attention_guidance_on_difflab_networks(kind):
    den = tiny_denoiser(kind)
    g = torch.Generator().manual_seed(2)
    x, sigma = torch.randn(3, 2, 8, 8, generator=g), torch.tensor([0.5, 1.0, 4.0])
    labels = torch.tensor([0, 1, 2])
    with torch.no_grad():
        d = den(x, sigma, labels=labels)
        with identity_attention(den):
            d_hat = den(x, sigma, labels=labels)
        assert (d - d_hat).abs().max() > 1e-3  # the perturbed branch differs
        torch.testing.assert_close(perturbed_attention(den, 1.0)(x, sigma, labels=labels), d)
        got = perturbed_attention(den, 2.5)(x, sigma, labels=labels)
        torch.testing.assert_close(got, d_hat + 2.5 * (d - d_hat))
        first = next(iter(attention_layers(den)))
        with identity_attention(den, [first]):
            d_one = den(x, sigma, labels=labels)
        one = perturbed_attention(den, 2.5, layers=[first])(x, sigma, labels=labels)
        torch.testing.assert_close(one, d_one + 2.5 * (d - d_one))
    assert not any(layer.identity for layer in attention_layers(den).values())  # restored
    calls = []
    guided = perturbed_attention(den, 2.0)
    with torch.no_grad():
        out = sampling.get("heun")(
            lambda x, s, **c: calls.append(1) or guided(x, s, **c),
            x * 5,
            torch.tensor([5.0, 1.0, 0.2, 0.0]),
            cond={"labels": labels},
        )
    assert out.shape == x.shape and bool(torch.isfinite(out).all())
    assert len(calls) == sampling.info("heun").nfe(3)
    with pytest.raises(ValueError, match="unknown attention layer"):
        perturbed_attention(den, 2.0, layers=["nope"])
    with pytest.raises(ValueError, match="network="):
        perturbed_attention(lambda x, s, **c: x, 2.0)
    mlp = EDMPrecond(models.build({"type": "mlp", "dim": 3}))
    with pytest.raises(ValueError, match="no attention layers"):
        perturbed_attention(mlp, 2.0)


# ---------------------------------------------------------------------- CFG++: renoising


def test_cfg_pp_on_euler_renoises_with_the_unconditional_eps(gmm):
    sigmas = torch.tensor([8.0, 3.0, 1.0, 0.4, 0.1, 0.0], dtype=torch.float64)
    x0 = points() * 5
    den, lam = labelled(gmm), 0.6
    got = sampling.get("euler")(
        cfg_pp(den, lam, sigmas), x0, sigmas, cond={"labels": CLASS}, final="denoised"
    )
    x = x0
    for s, nxt in itertools.pairwise(sigmas):  # the paper's DDIM loop, in sigma coordinates
        d_c, d_u = den(x, float(s), CLASS), gmm.denoise(x, float(s))
        x = d_u + lam * (d_c - d_u) + nxt * (x - d_u) / s
    torch.testing.assert_close(got, x)
    # the equivalent CFG scale per step: w_i = lam sigma_i / (sigma_i - sigma_{i+1})
    s, nxt = 3.0, 1.0
    xs = points(seed=5)
    torch.testing.assert_close(
        cfg_pp(den, lam, sigmas)(xs, s, labels=CLASS),
        classifier_free(den, lam * s / (s - nxt))(xs, s, labels=CLASS),
    )
    with pytest.raises(ValueError, match="not a point of its grid"):
        cfg_pp(den, lam, sigmas)(xs, 2.0, labels=CLASS)
    with pytest.raises(ValueError, match=r"lambda must be in \[0, 1\]"):
        cfg_pp(den, 1.5, sigmas)


def test_renoise_at_an_infinite_start(gmm):
    """At sigma = inf x is the unit noise: the first step lands at X + sigma_1 x."""
    sigmas = torch.tensor([float("inf"), 2.0, 0.0], dtype=torch.float64)
    x = points()
    pair = lambda x, s: (gmm.denoise(x, s) + 1.0, gmm.denoise(x, s))  # noqa: E731
    step = sampling.get("euler")(renoise(pair, sigmas), x, sigmas[:2])
    torch.testing.assert_close(step, gmm.mean + 1.0 + 2.0 * x)


# ---------------------------------------------------------------------- every sampler


def guided_denoisers(gmm):
    den = labelled(gmm)
    weak = GaussianMixture(gmm.weights, gmm.means, 2 * gmm.covariances, labels=LABELS)
    return {
        "cfg": classifier_free(den, 2.0, sigma_interval=(0.5, 20.0)),
        "rescale": classifier_free(den, CFG(3.0, rescale=0.7)),
        "apg": classifier_free(den, APG(3.0, norm_threshold=1.0, momentum=-0.5)),
        "cfg_zero_star": classifier_free(den, CFGZeroStar(2.0, zero_init=10.0)),
        "composable": lambda x, s, labels: composable(den, [1.5, -0.5])(
            x, s, labels=torch.stack([labels, (labels + 1) % 3], 1)
        ),
        "autoguidance": autoguidance(den, labelled(weak), 2.0),
        "classifier": classifier_guidance(gmm.denoise, exact_log_classifier(gmm), 2.0),
        "reward": reward_guidance(den, lambda x0, labels: -x0.square().sum(1), 0.3),
    }


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m", "euler_ancestral"])
def test_every_guided_denoiser_works_with_every_sampler(gmm, sampler):
    sigmas = torch.tensor([10.0, 4.0, 1.5, 0.5, 0.1, 0.0], dtype=torch.float64)
    steps = len(sigmas) - 1
    x = points(seed=7).float() * 10
    labels = CLASS
    cases = guided_denoisers(gmm) | {"cfg_pp": cfg_pp(labelled(gmm), 0.5, sigmas)}
    for name, den in cases.items():
        calls = []

        def counting(x, s, den=den, calls=calls, **cond):
            calls.append(1)
            return den(x, s, **cond)

        g = torch.Generator().manual_seed(0)
        out = sampling.get(sampler)(counting, x, sigmas, cond={"labels": labels}, generator=g)
        assert out.shape == x.shape and out.dtype == x.dtype, name
        assert bool(torch.isfinite(out).all()), name
        assert len(calls) == sampling.info(sampler).nfe(steps), name


# ---------------------------------------------------------------------- the shipped classifier, errors


def test_shipped_noisy_classifier_is_noise_conditional_and_accurate():
    from difflab import data
    from difflab.pretrained import load_classifier

    clf = load_classifier("mnist_noisy_classifier")
    test = data.load("mnist", "test")
    x0, y = test.x[:200], test.labels[:200]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        noisy = x0 + 0.5 * torch.randn(x0.shape, generator=g)
        logits = clf(noisy, torch.full((200,), 0.5))
        assert logits.shape == (200, 10)
        assert float((logits.argmax(1) == y).double().mean()) > 0.95
        # the same images read differently at another noise level: it is noise-conditional
        assert (clf(noisy, 5.0) - logits).abs().max() > 0.1
        # at very high noise it falls back towards the class prior: near-uniform
        far = clf(x0 + 80 * torch.randn(x0.shape, generator=g), 80.0).softmax(1)
        assert float(far.max(1).values.mean()) < 0.5
    assert not any(p.requires_grad for p in clf.parameters())
    # guidance with it pulls the unconditional denoiser towards the class: p(c | D_s) rises with s
    with torch.no_grad():
        xs = x0[:20] + 2.0 * torch.randn(x0[:20].shape, generator=g)
        blur = lambda x, s, **c: x / (1 + s**2 / 0.25)  # noqa: E731  (Gaussian data's denoiser)
        p_c = [
            clf(classifier_guidance(blur, clf, s)(xs, 2.0, labels=y[:20]), 0.002)
            .softmax(1)
            .gather(1, y[:20, None])
            .mean()
            for s in (0.0, 1.0)
        ]
    assert p_c[1] > p_c[0] + 0.1


def test_bad_guidance_settings_are_named():
    den = lambda x, s, **c: x  # noqa: E731
    with pytest.raises(ValueError, match="guidance scale must be"):
        classifier_free(den, -1.0)
    with pytest.raises(ValueError, match="rescale phi must be in"):
        CFG(2.0, rescale=1.5)
    with pytest.raises(ValueError, match="unknown guidance space 'eps'"):
        APG(2.0, space="eps")
    with pytest.raises(ValueError, match="momentum must be in"):
        APG(2.0, momentum=1.0)
    with pytest.raises(ValueError, match="norm_threshold must be > 0"):
        APG(2.0, norm_threshold=0.0)
    with pytest.raises(ValueError, match="0 <= lo < hi"):
        classifier_free(den, 2.0, sigma_interval=(3.0, 1.0))
    with pytest.raises(ValueError, match="zero_init must be"):
        CFGZeroStar(2.0, zero_init=-1.0)
    with pytest.raises(ValueError, match="one finite number per condition"):
        composable(den, [])
    with pytest.raises(ValueError, match="a scale or a rule"):
        classifier_free(den, "strong")


# ---------------------------------------------------------------------- saved models and the CLI


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from test_pretrained import save_tiny

    return save_tiny(tmp_path_factory.mktemp("models") / "tiny")


def test_model_generate_takes_a_rule(tiny_model_dir):
    from difflab import pretrained

    model = pretrained.load(tiny_model_dir)
    kw = {"sampler": "euler", "steps": 3, "seed": 1}
    plain = model.sample(6, guidance=2.0, **kw)
    torch.testing.assert_close(model.sample(6, guidance=CFG(2.0), **kw), plain)
    apg = model.generate(6, guidance=APG(2.0), **kw)
    assert apg.network_evals == 2 * apg.nfe and not torch.allclose(apg.x, plain)
    outside = model.sample(6, guidance=2.0, guidance_interval=(1e3, 1e4), **kw)
    torch.testing.assert_close(outside, model.sample(6, guidance=1.0, **kw))


def test_cli_guidance_options(tiny_model_dir, tmp_path, capsys):
    from difflab.cli import main

    def sample(*extra):
        out = tmp_path / f"s{len(list(tmp_path.iterdir()))}.npz"
        base = ["sample", "--model", str(tiny_model_dir), "--steps", "3", "--n", "6"]
        code = main([*base, "--sampler", "euler", *extra, "--out", str(out)])
        return code, (np.load(out)["images"] if code == 0 else None)

    bad = {
        ("--guidance-interval", "2", "1"): "--guidance-interval needs 0 <= LO < HI, got 2 1",
        ("--guidance-method", "apgg"): "Did you mean 'apg'",
        ("--guidance-rescale", "1.5"): "--guidance-rescale must be in [0, 1]",
        (
            "--guidance-method",
            "apg",
            "--guidance-rescale",
            "0.5",
        ): "applies to --guidance-method cfg",
    }
    for extra, message in bad.items():
        code, _ = sample(*extra)
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, (extra, err)
    _, unguided = sample("--guidance", "1")
    _, outside = sample("--guidance", "3", "--guidance-interval", "1000", "2000")
    assert (outside == unguided).all()
    _, cfg = sample("--guidance", "3")
    for extra in (
        ["--guidance-method", "apg"],
        ["--guidance-rescale", "0.7"],
        ["--guidance-method", "cfg_zero_star"],
    ):
        code, images = sample("--guidance", "3", *extra)
        assert code == 0 and images.shape == cfg.shape and not (images == cfg).all(), extra
    assert "guidance 3 (cfg_zero_star)" in capsys.readouterr().out
