"""Training objectives judged against the exact Gaussian mixture: a network that returns the exact
E[x0 | x] (in any prediction type, on any process, under any weighting) minimizes the loss, with the
loss's derivative along any perturbation zero up to Monte Carlo error; the loss on the network output
equals lambda(sigma) ||D - x0||^2 with each prediction's native weight; noise levels follow their
distributions; label dropout, immiscible assignment and the Objective API. float64 unless stated."""

from __future__ import annotations

import itertools
import json
import math
import sys

import pytest
import torch
from torch import nn

from difflab.core.parameterization import Denoiser, EDMPrecond, from_x0, target
from difflab.core.processes import EDM, VE, Flow, Trig, VPCosine, VPDiscrete, VPLinear
from difflab.testing import random_mixture
from difflab.training import (
    NOISE_LEVELS,
    PREDICTIONS,
    WEIGHTINGS,
    NoiseLevels,
    Objective,
    Weighting,
    denoising_loss,
    drop_labels,
    immiscible_assignment,
    network_output,
    output_slopes,
)

SD = dict(schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
# each process with the noise-level distribution it is usually trained with
PROCESSES = {
    "ddpm": (lambda: VPDiscrete(), "discrete"),
    "ddpm_zero_snr": (lambda: VPDiscrete(**SD, rescale_zero_terminal_snr=True), "discrete"),
    "vp_linear": (lambda: VPLinear(), "uniform_t"),
    "vp_cosine": (lambda: VPCosine(), "logit_normal"),
    "ve": (lambda: VE(), "uniform_t"),
    "edm": (lambda: EDM(), "lognormal"),
    "flow": (lambda: Flow(), "logit_normal"),
    "trig": (lambda: Trig(), "uniform_t"),
}
VP = ("ddpm", "ddpm_zero_snr", "vp_linear", "vp_cosine", "trig")
CASES = [
    (name, pred)
    for name in PROCESSES
    for pred in PREDICTIONS
    if not (pred == "velocity" and name.startswith("ddpm"))  # a table has no time derivative
]
IDS = [f"{n}-{p}" for n, p in CASES]
GMM = random_mixture(dim=3, components=3, seed=1)
_cache: dict = {}


def _process(name: str):
    if name not in _cache:
        _cache[name] = PROCESSES[name][0]()
    return _cache[name]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _coefs(p, s: torch.Tensor, pred: str) -> dict:
    alpha, sig = p.coefficients(s)
    c = {"alpha": alpha, "sigma": sig}
    if pred == "velocity":
        t = p.t_of(s)
        c["alpha_dot"], c["sigma_dot"] = p.alpha_dot(t), p.sigma_dot(t)
    return c


def _mixture_net(p, pred: str, denoise, sigma_data: float = 0.5):
    """A network of prediction type ``pred`` (time input "sigma"; EDM: ln(sigma)/4) whose wrapper
    returns ``denoise(x, sigma)``: it undoes the input scaling, denoises, converts to its output."""
    pre = EDMPrecond(None, sigma_data=sigma_data)

    def net(x_in: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        if pred == "edm":
            s = torch.exp(4 * time)[:, None]
            c_skip, c_out, c_in = pre.coefficients(s[:, 0], 2)
            x = torch.where(torch.isinf(s), x_in, x_in / c_in)
            d = denoise(x, s[:, 0])
            return (d - torch.where(torch.isinf(s), 0.0, c_skip * x)) / c_out
        s = time[:, None]
        c = _coefs(p, s, pred)
        x = torch.where(torch.isinf(s), x_in, x_in / c["alpha"])
        return from_x0(pred, denoise(x, time), x_in, **c)

    return net


def _smooth_direction(seed: int, scale: float = 0.3):
    """delta(x, sigma) = A tanh(B x + c ln sigma + d): a random smooth perturbation of a denoiser."""
    g = _gen(seed)
    a = torch.randn(3, 8, generator=g, dtype=torch.float64) * scale
    b = torch.randn(8, 3, generator=g, dtype=torch.float64)
    c, d = (torch.randn(8, generator=g, dtype=torch.float64) for _ in range(2))

    def delta(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        log_s = torch.log(sigma).clamp(-20, 20)[:, None]
        return torch.tanh(x @ b.T + c * log_s + d) @ a.T

    return delta


def _undefined(name: str, pred: str, weighting: str) -> bool:
    """eps and score outputs cannot carry a weight that stays positive at zero SNR."""
    return (
        name == "ddpm_zero_snr"
        and pred in ("eps", "score")
        and weighting in ("edm", "truncated_snr")
    )


# --------------------------------------------------------------------------------------------
# the exact denoiser minimizes every objective (the acceptance test)

N = 2048
H = 0.5


def _line(objective, p, pred, x0, draw, x, base, direction, weighting):
    """Per-sample losses of D = base + h direction at h = 0, +H, -H with the draws held fixed; the
    losses are quadratic in h, l(h) = l0 + h d + h^2 q."""
    sigma = draw.sigma
    h = [0.0]

    def denoise(x_seen, s_seen):
        # the network must see exactly the noised sample x = x0 + sigma eps and its sigma
        torch.testing.assert_close(s_seen, sigma, rtol=1e-12, atol=0)
        finite = torch.isfinite(sigma)
        torch.testing.assert_close(x_seen[finite], x[finite], rtol=1e-9, atol=1e-9)
        return base + h[0] * direction(x_seen, s_seen)

    den = objective.denoiser(_mixture_net(p, pred, denoise))
    losses = {}
    for value in (0.0, H, -H):
        h[0] = value
        losses[value] = denoising_loss(den, x0, draw.eps, sigma, weighting)
    d = (losses[H] - losses[-H]) / (2 * H)  # per-sample derivative at h = 0
    q = ((losses[H] + losses[-H]) / 2 - losses[0.0]) / H**2
    t = d.mean() / (d.std() / math.sqrt(len(d)))  # derivative in standard errors
    h_min = -d.mean() / (2 * q.mean())  # minimizer of the empirical loss along the direction
    return losses, float(t), float(h_min)


@pytest.mark.parametrize("name, pred", CASES, ids=IDS)
def test_exact_denoiser_minimizes_every_weighting(name, pred):
    """With the noise draws fixed, the exact E[x0|x] network has a lower loss than its perturbations
    and a zero derivative along them: within 4 standard errors, and the empirical minimizer along a
    random smooth direction within 0.05 of it. A denoiser at the wrong noise level (1.25 sigma, a
    scaling bug) fails the same statistic: along the direction to the truth its minimizer is far
    from 0 (in expectation at exactly 1)."""
    p, levels = _process(name), PROCESSES[name][1]
    objective = Objective(p, prediction=pred, noise_levels=levels, time_input="sigma")
    g = _gen(0)
    x0 = GMM.sample(N, generator=g)
    draw = objective.draw(x0, generator=g)
    s = draw.sigma
    x = torch.where(torch.isinf(s)[:, None], draw.eps, x0 + s[:, None] * draw.eps)
    exact, wrong = GMM.denoise(x, s), GMM.denoise(x, 1.25 * s)
    random_direction = _smooth_direction(1)
    checked = 0
    for weighting in WEIGHTINGS:
        if _undefined(name, pred, weighting):
            continue
        losses, t, h_min = _line(
            objective, p, pred, x0, draw, x, exact, random_direction, weighting
        )
        base = float(losses[0.0].mean())
        assert float(losses[H].mean()) > base and float(losses[-H].mean()) > base, weighting
        assert abs(t) < 4, (weighting, t)
        assert abs(h_min) < 0.05, (weighting, h_min)
        _, _, h_wrong = _line(
            objective, p, pred, x0, draw, x, wrong, lambda *_: exact - wrong, weighting
        )
        assert h_wrong > 0.2, (weighting, h_wrong)
        checked += 1
    assert checked >= 3


def test_undefined_weightings_are_rejected():
    p = _process("ddpm_zero_snr")
    for pred, weighting in itertools.product(PREDICTIONS[:-1], WEIGHTINGS):
        if pred == "velocity":
            continue
        if _undefined("ddpm_zero_snr", pred, weighting):
            with pytest.raises(ValueError, match="sigma = inf"):
                Objective(p, prediction=pred, weighting=weighting, noise_levels="discrete")
        else:
            Objective(p, prediction=pred, weighting=weighting, noise_levels="discrete")
    with pytest.raises(ValueError, match="sigma = 0"):
        Objective(VPLinear(), prediction="x0", weighting="snr", t_min=0.0)
    Objective(VPLinear(), prediction="x0", weighting="min_snr", t_min=0.0)


# --------------------------------------------------------------------------------------------
# the loss on the network output is lambda ||D - x0||^2, with each prediction's native weight


def _native(name: str, pred: str, p, s: torch.Tensor) -> torch.Tensor:
    """The weight on ||D - x0||^2 of each prediction's unit-weighted output loss, by hand."""
    if pred == "edm":
        return (s**2 + 0.25) / (0.25 * s**2)
    if pred == "eps":
        return 1 / s**2  # SNR
    if pred == "x0":
        return torch.ones_like(s)
    if pred == "v":
        if name in VP:
            return 1 + 1 / s**2  # SNR + 1
        if name == "flow":
            return (1 + s**2) ** 2 / (s**2 * (1 + s) ** 2)
        return (1 + s**2) ** 2 / s**2
    if pred == "score":
        if name in VP:
            return (1 + s**2) / s**4  # SNR (SNR + 1)
        if name == "flow":
            return (1 + s) ** 2 / s**4
        return 1 / s**4
    # velocity
    if name == "trig":
        return (math.pi / 2) ** 2 * (1 + 1 / s**2)
    if name == "flow":
        return (1 + 1 / s) ** 2  # (1 + sqrt(SNR))^2
    if name == "edm":
        return 1 / s**2  # x_t = x0 + t eps: the velocity is eps
    if name == "ve":
        return torch.full_like(s, math.log(50.0 / 0.01) ** 2)
    alpha = p.coefficients(s)[
        0
    ]  # VP: (alpha sigma' - alpha' sigma)^2 / sigma^2 = alpha'^2 / sigma^4
    return p.alpha_dot(p.t_of(s)) ** 2 / (1 - alpha**2) ** 2


LAMBDAS = {
    "snr": ({}, lambda s: 1 / s**2),
    "min_snr": ({}, lambda s: torch.clamp(1 / s**2, max=5.0)),
    "min_snr_gamma_2": ({"gamma": 2.0}, lambda s: torch.clamp(1 / s**2, max=2.0)),
    "edm": ({}, lambda s: (s**2 + 0.25) / (0.25 * s**2)),
    "edm_sd_1.3": ({"sigma_data": 1.3}, lambda s: (s**2 + 1.69) / (1.69 * s**2)),
    "truncated_snr": ({}, lambda s: torch.clamp(1 / s**2, min=1.0)),
}


@pytest.mark.parametrize("name, pred", CASES, ids=IDS)
def test_loss_is_weighted_x0_error(name, pred):
    """denoising_loss == lambda(sigma) ||D(x0 + sigma eps) - x0||^2 / d for an imperfect network,
    D being the wrapper's own x0 estimate; "uniform" gives the prediction's native weight."""
    p = _process(name)
    g = _gen(2)
    x0 = GMM.sample(256, generator=g)
    eps = torch.randn(256, 3, generator=g, dtype=torch.float64)
    sigma = torch.exp(torch.empty(256, dtype=torch.float64).uniform_(-3, 3, generator=g))
    delta = _smooth_direction(3)
    objective = Objective(p, prediction=pred, time_input="sigma")
    den = objective.denoiser(_mixture_net(p, pred, lambda x, s: GMM.denoise(x, s) + delta(x, s)))
    x = x0 + sigma[:, None] * eps
    err = (den(x, sigma) - x0).square().mean(1)
    torch.testing.assert_close(
        denoising_loss(den, x0, eps, sigma), _native(name, pred, p, sigma) * err, rtol=1e-8, atol=0
    )
    for key, (options, lam) in LAMBDAS.items():
        weighting = Weighting(key.split("_gamma")[0].split("_sd")[0], **options)
        torch.testing.assert_close(
            denoising_loss(den, x0, eps, sigma, weighting), lam(sigma) * err, rtol=1e-8, atol=0
        )


def test_weightings_by_name():
    s = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    lam, lam_eps = Weighting("min_snr", gamma=5.0)(s)
    torch.testing.assert_close(lam, torch.tensor([5.0, 1.0, 0.01], dtype=torch.float64))
    torch.testing.assert_close(lam_eps, s**2 * lam)
    for name in WEIGHTINGS[1:]:
        lam, lam_eps = Weighting(name)(s)
        torch.testing.assert_close(lam_eps, s**2 * lam, rtol=1e-14, atol=0)
    with pytest.raises(ValueError, match="native weight"):
        Weighting("uniform")(s)
    with pytest.raises(ValueError, match="min_snr"):
        Weighting("min-snr")
    with pytest.raises(ValueError, match="gamma"):
        Weighting("snr", gamma=3.0)
    assert Weighting("edm", sigma_data=1.0).config == {"name": "edm", "sigma_data": 1.0}


@pytest.mark.parametrize("name, pred", CASES, ids=IDS)
def test_output_weights_exact_at_zero_and_infinite_sigma(name, pred):
    """The weight on the output error is the sigma -> 0 / inf limit there: no 0/0 or inf/inf (eps
    with the SNR weight is exactly 1 at both ends). Velocity needs the process's time at sigma, so
    ends where t(sigma) is infinite (VE at 0, VE/EDM/linear VP at inf) are outside its domain."""
    p = _process(name)
    den = Objective(p, prediction=pred).denoiser(None)
    like = torch.zeros(1, 2, dtype=torch.float64)
    for end, near in ((0.0, 1e-9), (math.inf, 1e9)):
        if pred == "velocity" and not math.isfinite(float(p.t_of(torch.tensor(end)))):
            continue
        for weighting in map(Weighting, WEIGHTINGS):
            at = [
                float(weighting.output_weight(s[:, None], *output_slopes(den, s, like)))
                for s in (torch.tensor([end], dtype=torch.float64), torch.tensor([near]).double())
            ]
            assert not math.isnan(at[0]), (end, weighting)
            if at[1] > 1e12:
                assert at[0] == math.inf, (end, weighting, at)
            else:
                assert at[0] == pytest.approx(at[1], rel=1e-6, abs=1e-12), (end, weighting)
            if weighting.name == "uniform" or (weighting.name == "snr" and pred == "eps"):
                assert at[0] == 1.0


def _exact_net(p, pred: str, sigma_data: float = 0.5):
    """out = E[target | x] = target(E[x0 | x], E[eps | x]) from the mixture (target is linear in
    x0 and eps), exact also at sigma = 0 and inf where converting x0 would divide 0 by 0."""

    def net(x_in: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        if pred == "edm":
            s = torch.exp(4 * time)
            c_in = torch.rsqrt(s**2 + sigma_data**2)[:, None]
            x = torch.where(torch.isinf(s)[:, None], x_in, x_in / c_in)
            noise_in = torch.rsqrt(1 + (sigma_data / s) ** 2)[:, None]
            return noise_in / sigma_data * GMM.denoise(x, s) - sigma_data * c_in * GMM.eps(x, s)
        c = _coefs(p, time[:, None], pred)
        x = torch.where(torch.isinf(time)[:, None], x_in, x_in / c["alpha"])
        return target(pred, GMM.denoise(x, time), GMM.eps(x, time), **c)

    return net


@pytest.mark.parametrize("pred", ["eps", "x0", "v", "velocity", "edm"])
def test_loss_at_zero_and_infinite_sigma_is_the_limit(pred):
    """On a zero-terminal-SNR flow the exact network's loss at sigma = 0 (clean input) and at
    sigma = inf (pure noise) is finite and the limit of its value as sigma -> 0 / inf, under every
    weighting that is finite there."""
    p = Flow()
    g = _gen(4)
    x0 = GMM.sample(8, generator=g)
    eps = torch.randn(8, 3, generator=g, dtype=torch.float64)
    den = Objective(p, prediction=pred, time_input="sigma").denoiser(_exact_net(p, pred))
    for weighting in WEIGHTINGS:
        for end, near in ((0.0, 1e-9), (math.inf, 1e9)):
            if end == 0 and pred == "x0" and weighting not in ("uniform", "min_snr"):
                continue  # lambda = inf on a finite x0 output
            if end == math.inf and pred == "eps" and weighting in ("edm", "truncated_snr"):
                continue  # lambda > 0 on an eps output, which carries no x0 at zero SNR
            at_end = denoising_loss(den, x0, eps, torch.full((8,), end).double(), weighting)
            at_near = denoising_loss(den, x0, eps, torch.full((8,), near).double(), weighting)
            assert bool(torch.isfinite(at_end).all()), (weighting, end, at_end)
            torch.testing.assert_close(at_end, at_near, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize(
    "name, pred, weighting",
    [("vp_linear", "eps", "uniform"), ("vp_cosine", "v", "snr"), ("edm", "edm", "edm"),
     ("flow", "velocity", "min_snr"), ("ve", "x0", "truncated_snr")],
)  # fmt: skip
def test_float32_loss_accurate_at_small_sigma(name, pred, weighting):
    """The loss is taken on the network output, so float32 keeps its accuracy at sigma = 1e-6 where
    the x0-space error (x0_hat - x0 ~ sigma) would be lost to cancellation."""
    p = _process(name)
    g = _gen(5)
    w = torch.randn(3, 3, generator=g, dtype=torch.float64)
    x0 = torch.randn(64, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(64, 3, generator=g, dtype=torch.float64)
    sigma = torch.logspace(-6, -2, 64, dtype=torch.float64)
    den = Objective(p, prediction=pred).denoiser(lambda x_t, t: torch.tanh(x_t @ w.to(x_t.dtype)))
    exact = denoising_loss(den, x0, eps, sigma, weighting)
    single = denoising_loss(den, x0.float(), eps.float(), sigma.float(), weighting)
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), exact, rtol=1e-5, atol=0)


# --------------------------------------------------------------------------------------------
# the network sees what its wrapper gives it


@pytest.mark.parametrize("name, pred", CASES, ids=IDS)
def test_network_output_matches_wrapper(name, pred):
    """network_output calls the network with the input and time the wrapper gives it at
    x = x0 + sigma eps, its target is the wrapper's, and a network that outputs the target makes
    the wrapper return x0 (the EDM preconditioning round trip included)."""
    p = _process(name)
    g = _gen(6)
    x0 = torch.randn(16, 2, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(16, 2, 3, generator=g, dtype=torch.float64)
    sigma = torch.exp(torch.empty(16, dtype=torch.float64).uniform_(-4, 4, generator=g))
    seen = []

    def spy(x_in, time, **cond):
        seen.append((x_in, time, cond))
        return torch.zeros_like(x_in)

    den = Objective(p, prediction=pred).denoiser(spy)
    _, tgt = network_output(den, x0, eps, sigma, labels=torch.arange(16))
    den(x0 + sigma[:, None, None] * eps, sigma, labels=torch.arange(16))
    (x_ours, t_ours, c_ours), (x_wrap, t_wrap, c_wrap) = seen
    torch.testing.assert_close(x_ours, x_wrap, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(t_ours, t_wrap, rtol=0, atol=0)
    assert torch.equal(c_ours["labels"], c_wrap["labels"])
    torch.testing.assert_close(tgt, den.target(x0, eps, sigma), rtol=1e-10, atol=1e-10)
    den.net = lambda x_in, time: tgt
    torch.testing.assert_close(
        den(x0 + sigma[:, None, None] * eps, sigma), x0, rtol=1e-9, atol=1e-9
    )


def test_edm_target_is_stable_at_small_sigma():
    """EDM's F target c_in (sigma/sd x0 - sd eps) has no x0 - c_skip x cancellation: float32 matches
    float64 at sigma = 1e-6, and it is exact at sigma = 0 (-eps) and inf (x0 / sd)."""
    pre = EDMPrecond(None, sigma_data=0.5)
    g = _gen(7)
    x0 = torch.randn(8, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(8, 4, generator=g, dtype=torch.float64)
    pre.net = lambda x_in, t: torch.zeros_like(x_in)
    sigma = torch.full((8,), 1e-6, dtype=torch.float64)
    _, t64 = network_output(pre, x0, eps, sigma)
    _, t32 = network_output(pre, x0.float(), eps.float(), sigma.float())
    torch.testing.assert_close(t32.double(), t64, rtol=1e-6, atol=1e-6)
    _, ends = network_output(pre, x0[:2], eps[:2], torch.tensor([0.0, math.inf]).double())
    torch.testing.assert_close(ends, torch.stack([-eps[0], x0[1] / 0.5]), rtol=1e-15, atol=0)


def test_per_element_sigma():
    """A noise level per element (diffusion forcing): with an elementwise network the loss is the
    mean over elements of each element's own weighted error."""
    p = _process("flow")
    g = _gen(8)
    x0 = torch.randn(32, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(32, 4, generator=g, dtype=torch.float64)
    sigma = torch.exp(torch.randn(32, 4, generator=g, dtype=torch.float64))
    den = Objective(p, prediction="v", time_input="sigma").denoiser(
        lambda x_t, t: torch.sin(x_t) * torch.log1p(t.reshape(len(t), -1))
    )
    loss = denoising_loss(den, x0, eps, sigma, "min_snr")
    columns = torch.stack(
        [
            denoising_loss(den, x0[:, j : j + 1], eps[:, j : j + 1], sigma[:, j], "min_snr")
            for j in range(4)
        ],
        1,
    )
    torch.testing.assert_close(loss, columns.mean(1), rtol=1e-12, atol=0)
    # a per-sample sigma broadcast to every element is the same as [B]
    torch.testing.assert_close(
        denoising_loss(den, x0, eps, sigma[:, :1].expand(32, 4)),
        denoising_loss(den, x0, eps, sigma[:, 0]),
        rtol=1e-14,
        atol=0,
    )


def test_loss_input_errors():
    den = Objective(Flow(), prediction="v").denoiser(lambda x_t, t: x_t)
    x0 = torch.zeros(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="same shape"):
        denoising_loss(den, x0, torch.zeros(4, 2, dtype=torch.float64), torch.ones(4))
    with pytest.raises(ValueError, match=">= 0"):
        denoising_loss(den, x0, x0, -torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="network returned"):
        bad = Objective(Flow(), prediction="v").denoiser(lambda x_t, t: x_t[:, :2])
        denoising_loss(bad, x0, x0, torch.ones(4, dtype=torch.float64))
    with pytest.raises(TypeError, match="Denoiser"):
        denoising_loss(lambda x, s: x, x0, x0, torch.ones(4, dtype=torch.float64))


# --------------------------------------------------------------------------------------------
# noise levels


def _ks(samples: torch.Tensor, cdf) -> float:
    """Kolmogorov-Smirnov statistic of samples against a continuous CDF."""
    x, _ = torch.sort(samples)
    f = cdf(x)
    n = len(x)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float(torch.maximum(i / n - f, f - (i - 1) / n).max())


def _phi(z: torch.Tensor) -> torch.Tensor:
    return torch.special.ndtr(z)


def _uniform_t_cdf(p, lo, hi, shift=1.0):
    return lambda s: ((p.t_of(s / shift) - lo) / (hi - lo)).clamp(0, 1)


KS_N = 20000
KS_BOUND = 1.95 / math.sqrt(KS_N)  # exceeded with probability 0.001 under the null

DISTRIBUTIONS = {
    "uniform_t-vp_linear": (VPLinear(), "uniform_t", {}, _uniform_t_cdf(VPLinear(), 1e-3, 1.0)),
    "uniform_t-ve-range": (
        VE(),
        "uniform_t",
        {"t_min": 0.2, "t_max": 0.7},
        _uniform_t_cdf(VE(), 0.2, 0.7),
    ),
    "uniform_t-flow-shift3": (
        Flow(shift=3.0),
        "uniform_t",
        {},
        _uniform_t_cdf(Flow(), 1e-3, 1.0, shift=3.0),
    ),
    "lognormal": (EDM(), "lognormal", {}, lambda s: _phi((s.log() + 1.2) / 1.2)),
    "lognormal-options": (
        EDM(),
        "lognormal",
        {"p_mean": 0.4, "p_std": 0.7},
        lambda s: _phi((s.log() - 0.4) / 0.7),
    ),
    "logit_normal-flow": (Flow(), "logit_normal", {}, lambda s: _phi(s.log())),
    "logit_normal-flow-shift3-options": (
        Flow(shift=3.0),
        "logit_normal",
        {"logit_mean": 0.5, "logit_std": 0.8},
        lambda s: _phi(((s / 3).log() - 0.5) / 0.8),
    ),
    "logit_normal-vp_cosine": (
        VPCosine(),
        "logit_normal",
        {},
        lambda s: _phi(torch.logit((VPCosine().t_of(s) - 1e-3) / (0.9946 - 1e-3))),
    ),
}


@pytest.mark.parametrize("stratified", [False, True], ids=["iid", "stratified"])
@pytest.mark.parametrize("key", list(DISTRIBUTIONS))
def test_noise_level_distributions(key, stratified):
    p, name, options, cdf = DISTRIBUTIONS[key]
    levels = NoiseLevels(name, p, stratified=stratified, **options)
    # the stratified draw is a whole batch of KS_N: each stratum [k/n, (k+1)/n) holds one u
    sigma = levels(KS_N, _gen(9))
    assert sigma.shape == (KS_N,) and sigma.dtype == torch.float64
    assert bool((sigma > 0).all() & torch.isfinite(sigma).all())
    assert _ks(sigma, cdf) < KS_BOUND
    if stratified:  # the empirical CDF is within one stratum of the true one everywhere
        assert _ks(sigma, cdf) < 1.5 / KS_N
    # the KS check has power: a slightly different distribution fails it
    assert _ks(sigma * 1.25, cdf) > 2 * KS_BOUND
    # reproducible per generator, different across seeds
    assert torch.equal(levels(64, _gen(10)), levels(64, _gen(10)))
    assert not torch.equal(levels(64, _gen(10)), levels(64, _gen(11)))


@pytest.mark.parametrize("zero_snr", [False, True])
def test_discrete_noise_levels(zero_snr):
    p = VPDiscrete(**SD, rescale_zero_terminal_snr=zero_snr)
    levels = NoiseLevels("discrete", p)
    sigma = levels(200_000, _gen(12))
    steps = torch.searchsorted(p.sigmas, sigma)
    assert torch.equal(p.sigmas[steps], sigma)  # on the table, sigma = inf included
    counts = torch.bincount(steps, minlength=1000).double()
    chi2 = float(((counts - 200.0) ** 2 / 200.0).sum())
    assert chi2 < 999 + 5 * math.sqrt(2 * 999)  # chi-square with 999 degrees of freedom
    assert int(torch.isinf(sigma).sum()) == (int(counts[-1]) if zero_snr else 0)
    # stratified over a batch of N timesteps: each timestep exactly once
    strat = NoiseLevels("discrete", p, stratified=True)(1000, _gen(13))
    assert torch.equal(torch.sort(torch.searchsorted(p.sigmas, strat)).values, torch.arange(1000))


def test_noise_level_errors():
    with pytest.raises(ValueError, match="lognormal"):
        NoiseLevels("log_normal_", EDM())
    with pytest.raises(ValueError, match="VPDiscrete"):
        NoiseLevels("discrete", Flow())
    with pytest.raises(ValueError, match="p_mean"):
        NoiseLevels("lognormal", EDM(), mean=0.0)
    with pytest.raises(ValueError, match="t_min <= t_max"):
        NoiseLevels("uniform_t", VE(), t_min=0.8, t_max=0.2)
    assert set(NOISE_LEVELS) == {"uniform_t", "lognormal", "logit_normal", "discrete"}
    assert NoiseLevels("lognormal", EDM(), p_std=2.0).config == {
        "name": "lognormal",
        "stratified": False,
        "p_mean": -1.2,
        "p_std": 2.0,
    }


# --------------------------------------------------------------------------------------------
# label dropout and immiscible assignment


def test_label_dropout_rate():
    n, p = 200_000, 0.1
    labels = torch.randint(0, 10, (n,), generator=_gen(14))
    dropped = drop_labels(labels, p, _gen(15))
    null = dropped == -1
    rate = float(null.double().mean())
    assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / n)
    assert torch.equal(dropped[~null], labels[~null])
    assert torch.equal(drop_labels(labels, p, _gen(15)), dropped)
    assert torch.equal(drop_labels(labels, 0.0, _gen(15)), labels)
    assert bool((drop_labels(labels, 1.0, _gen(15)) == -1).all())
    with pytest.raises(ValueError, match="probability"):
        drop_labels(labels, 1.5)


def _total_distance(x0, eps, perm):
    return float((x0 - eps[perm]).square().sum())


def test_immiscible_assignment_is_the_optimal_permutation():
    g = _gen(16)
    x0 = torch.randn(6, 2, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 2, 3, generator=g, dtype=torch.float64)
    perm = immiscible_assignment(x0, eps)
    assert sorted(perm.tolist()) == list(range(6))
    best = min(_total_distance(x0, eps, list(q)) for q in itertools.permutations(range(6)))
    assert _total_distance(x0, eps, perm) == pytest.approx(best, rel=1e-12)
    # a larger batch: a permutation that beats the identity pairing
    x0 = torch.randn(64, 16, generator=g) + 1.0
    eps = torch.randn(64, 16, generator=g)
    perm = immiscible_assignment(x0, eps)
    assert torch.equal(torch.sort(perm).values, torch.arange(64))
    assert _total_distance(x0, eps, perm) < 0.95 * _total_distance(x0, eps, torch.arange(64))


def test_immiscible_needs_scipy(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)
    with pytest.raises(ImportError, match=r"difflab\[schedules\]"):
        immiscible_assignment(torch.zeros(2, 3), torch.zeros(2, 3))


def test_immiscible_objective_permutes_the_noise():
    x0 = GMM.sample(32, generator=_gen(17))
    plain = Objective(Flow(), prediction="velocity").draw(x0, generator=_gen(18))
    mixed = Objective(Flow(), prediction="velocity", immiscible=True).draw(x0, generator=_gen(18))
    assert torch.equal(plain.sigma, mixed.sigma)
    perm = immiscible_assignment(x0, plain.eps)
    assert torch.equal(mixed.eps, plain.eps[perm])
    assert _total_distance(x0, mixed.eps, torch.arange(32)) < _total_distance(
        x0, plain.eps, torch.arange(32)
    )


# --------------------------------------------------------------------------------------------
# the Objective entry point


def _spy_net():
    seen = {}

    def net(x_t, time, labels=None):
        seen["labels"] = labels
        return torch.tanh(x_t)

    return net, seen


def test_objective_loss_reproducible_and_equal_to_pure_loss():
    objective = Objective(
        VPCosine(), prediction="v", weighting="min_snr", noise_levels="logit_normal", gamma=3.0
    )
    net, _ = _spy_net()
    x0 = GMM.sample(64, generator=_gen(19))
    mean, per_sample = objective.loss(net, x0, generator=_gen(20))
    assert per_sample.shape == (64,)
    torch.testing.assert_close(mean, per_sample.mean())
    again = objective.loss(net, x0, generator=_gen(20))[1]
    assert torch.equal(per_sample, again)
    assert not torch.equal(per_sample, objective.loss(net, x0, generator=_gen(21))[1])
    draw = objective.draw(x0, generator=_gen(20))
    den = objective.denoiser(net)
    assert torch.equal(
        per_sample, denoising_loss(den, x0, draw.eps, draw.sigma, objective.weighting)
    )
    # a wrapper passed in is used as it is
    assert torch.equal(per_sample, objective.loss(den, x0, generator=_gen(20))[1])


def test_objective_label_dropout_reaches_the_network():
    objective = Objective(Flow(), prediction="velocity", label_dropout=0.5)
    net, seen = _spy_net()
    x0 = GMM.sample(4000, generator=_gen(22))
    labels = torch.randint(0, 3, (4000,), generator=_gen(23))
    objective.loss(net, x0, labels, generator=_gen(24))
    null = seen["labels"] == -1
    assert abs(float(null.double().mean()) - 0.5) < 4 * math.sqrt(0.25 / 4000)
    assert torch.equal(seen["labels"][~null], labels[~null])
    assert torch.equal(objective.draw(x0, labels, _gen(24)).labels, seen["labels"])
    objective.loss(net, x0, generator=_gen(24))
    assert seen["labels"] is None


def test_objective_denoiser_matches_training():
    p = VPLinear()
    den = Objective(p, prediction="v", time_input="t1000").denoiser(lambda x_t, t: x_t)
    assert isinstance(den, Denoiser) and den.prediction == "v" and den.process is p
    assert torch.equal(den.time(torch.tensor([1.0])), 1000 * p.t_of(torch.tensor([1.0])))
    pre = Objective(EDM(), prediction="edm", noise_levels="lognormal", sigma_data=1.3).denoiser(
        lambda x, t: x
    )
    assert isinstance(pre, EDMPrecond) and pre.sigma_data == 1.3


def test_objective_trains_a_module():
    torch.manual_seed(0)
    net = nn.Linear(3, 3).double()
    objective = Objective(EDM(), prediction="edm", weighting="edm", noise_levels="lognormal")
    mean, _ = objective.loss(
        lambda x_in, t: net(x_in), GMM.sample(32, generator=_gen(25)), generator=_gen(26)
    )
    mean.backward()
    grads = [param.grad for param in net.parameters()]
    assert all(bool(torch.isfinite(gr).all()) and float(gr.abs().sum()) > 0 for gr in grads)


def test_objective_config_round_trip():
    objective = Objective(
        "ddpm",
        prediction="v",
        weighting="min_snr",
        noise_levels="discrete",
        label_dropout=0.1,
        stratified=True,
        gamma=4.0,
    )
    config = json.loads(json.dumps(objective.config))
    assert config["gamma"] == 4.0 and config["process"]["name"] == "vp_discrete"
    again = Objective.from_config(config)
    assert again.config == objective.config
    net, _ = _spy_net()
    x0 = GMM.sample(16, generator=_gen(27))
    labels = torch.arange(16) % 3
    assert torch.equal(
        objective.loss(net, x0, labels, _gen(28))[1], again.loss(net, x0, labels, _gen(28))[1]
    )
    edm = Objective(
        EDM(), prediction="edm", weighting="edm", noise_levels="lognormal", sigma_data=1.0
    )
    assert Objective.from_config(json.loads(json.dumps(edm.config))).sigma_data == 1.0
    with pytest.raises(ValueError, match="process"):
        Objective.from_config({"prediction": "eps"})


def test_objective_errors():
    with pytest.raises(ValueError, match="'eps'"):
        Objective(Flow(), prediction="epss")
    with pytest.raises(ValueError, match="'min_snr'"):
        Objective(Flow(), weighting="minsnr")
    with pytest.raises(ValueError, match="'lognormal'"):
        Objective(Flow(), noise_levels="lognorm")
    with pytest.raises(ValueError, match="'t1000'"):
        Objective(Flow(), time_input="t100")
    with pytest.raises(ValueError, match="'flow'"):
        Objective("flw")
    with pytest.raises(ValueError, match=r"'gamma'.*valid options"):
        Objective(Flow(), weighting="snr", gamma=5.0)
    with pytest.raises(ValueError, match="'sigma_data'"):
        Objective(Flow(), prediction="v", sigma_data=1.0)
    with pytest.raises(ValueError, match="probability"):
        Objective(Flow(), label_dropout=-0.1)
    with pytest.raises(ValueError, match="VPDiscrete"):
        Objective(Flow(), noise_levels="discrete")
