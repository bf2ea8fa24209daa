"""Denoiser wrappers: every prediction type on every process converts to x0 exactly, networks built
from the exact Gaussian-mixture denoiser are wrapped back into it, noise levels broadcast by the
left-aligned rule, zero terminal SNR stays finite, and EDM preconditioning is exact. float64."""

from __future__ import annotations

import math

import pytest
import torch

from difflab.core import parameterization as pz
from difflab.core.parameterization import (
    PREDICTIONS,
    TIME_INPUTS,
    Denoiser,
    EDMPrecond,
    from_x0,
    target,
    to_x0,
)
from difflab.core.processes import (
    EDM,
    VE,
    Flow,
    Interpolant,
    Trig,
    VPCosine,
    VPDiscrete,
    VPLinear,
)
from difflab.testing import gaussian, random_mixture

SD = dict(schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
PROCESSES = {
    "ddpm": lambda: VPDiscrete(),
    "ddpm_zero_snr": lambda: VPDiscrete(**SD, rescale_zero_terminal_snr=True),
    "vp_linear": lambda: VPLinear(),
    "vp_cosine": lambda: VPCosine(),
    "ve": lambda: VE(),
    "edm": lambda: EDM(),
    "flow": lambda: Flow(),
    "trig": lambda: Trig(),
    "interpolant": lambda: Interpolant(lambda t: 1 - t, lambda t: t**2, t_min=1e-3, t_max=0.999),
}
# processes reaching sigma_ve = inf, where alpha = 0
ZERO_SNR = ["ddpm_zero_snr", "flow", "trig"]
CASES = [
    (name, pred)
    for name in PROCESSES
    for pred in PREDICTIONS
    if not (pred == "velocity" and name.startswith("ddpm"))  # no time derivative
]
IDS = [f"{n}-{p}" for n, p in CASES]
_cache: dict = {}


def _process(name: str):
    if name not in _cache:
        _cache[name] = PROCESSES[name]()
    return _cache[name]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _sigmas(p, n: int, seed: int = 0, cap: float = 80.0) -> torch.Tensor:
    """n noise levels, log-uniform over [sigma_min, min(sigma_max, cap)]."""
    lo, hi = math.log(max(p.sigma_min, 1e-3)), math.log(min(p.sigma_max, cap))
    return torch.exp(lo + (hi - lo) * torch.rand(n, generator=_gen(seed), dtype=torch.float64))


def _coefs(p, s: torch.Tensor, pred: str) -> dict:
    """alpha, sigma (and derivatives for velocity) at noise levels s, computed from the process."""
    alpha, sig = p.coefficients(s)
    c = {"alpha": alpha, "sigma": sig}
    if pred == "velocity":
        t = p.t_of(s)
        c["alpha_dot"], c["sigma_dot"] = p.alpha_dot(t), p.sigma_dot(t)
    return c


def _sigma_of_time(p, time_input: str, time: torch.Tensor) -> torch.Tensor:
    """Invert the network's time input back to the noise level (what a fake network needs)."""
    if time_input == "sigma":
        return time
    if time_input == "log_sigma":
        return torch.exp(4 * time)
    scale = {"t": 1.0, "t1000": 1000.0, "t999": 999.0}[time_input]
    return p.sigma_ve(time / scale)


def _mixture_net(gmm, p, pred: str, time_input: str = "t", direct: bool = True):
    """A network trained to perfection on the mixture: it sees x_t = alpha x and its time input and
    returns the exact target of its prediction type. With ``direct`` the eps network is
    GaussianMixture.eps and the score network GaussianMixture.score (rescaled to x_t); every other
    output is converted from the exact denoiser by from_x0."""
    calls = []

    def net(x_t: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        calls.append(time)
        assert time.shape == (x_t.shape[0],)
        sigma = _sigma_of_time(p, time_input, time)
        s = sigma[:, None]
        c = _coefs(p, s, pred)
        x = torch.where(torch.isinf(s), x_t, x_t / c["alpha"])
        if direct and pred == "eps":
            return gmm.eps(x, sigma)
        if direct and pred == "score":  # grad_{x_t} log p(x_t) = score_x(x) / alpha
            return gmm.score(x, sigma) / c["alpha"]
        return from_x0(pred, gmm.denoise(x, sigma), x_t, **c)

    net.calls = calls
    return net


# --------------------------------------------------------------------------------------------
# the conversion formulas


@pytest.mark.parametrize("name, pred", CASES, ids=IDS)
def test_to_x0_inverts_target(name, pred):
    p = _process(name)
    g = _gen(1)
    x0 = torch.randn(64, 5, generator=g, dtype=torch.float64)
    eps = torch.randn(64, 5, generator=g, dtype=torch.float64)
    s = _sigmas(p, 64, seed=2)[:, None]
    c = _coefs(p, s, pred)
    x_t = c["alpha"] * x0 + c["sigma"] * eps
    out = target(pred, x0, eps, **c)
    torch.testing.assert_close(to_x0(pred, out, x_t, **c), x0, rtol=1e-10, atol=1e-10)
    # from_x0 recovers the target from (x0, x_t)
    torch.testing.assert_close(
        from_x0(pred, x0, x_t, **c), out, rtol=1e-10, atol=1e-10 * float(out.abs().max())
    )


@pytest.mark.parametrize("name, pred", CASES, ids=IDS)
def test_from_x0_inverts_to_x0(name, pred):
    p = _process(name)
    g = _gen(3)
    out = torch.randn(64, 5, generator=g, dtype=torch.float64)
    x_t = torch.randn(64, 5, generator=g, dtype=torch.float64)
    # from_x0 divides x_t - alpha x0 by sigma (twice for score): keep sigma_t >= 0.05 so the
    # round trip is conditioned well enough for 1e-10
    s = _sigmas(p, 64, seed=4, cap=20.0)[:, None]
    s = s[p.coefficients(s)[1] >= 0.05].reshape(-1, 1)
    assert len(s) > 20
    out, x_t = out[: len(s)], x_t[: len(s)]
    c = _coefs(p, s, pred)
    x0 = to_x0(pred, out, x_t, **c)
    torch.testing.assert_close(from_x0(pred, x0, x_t, **c), out, rtol=1e-10, atol=1e-10)
    # the other way round is well conditioned over the whole range
    s = _sigmas(p, 64, seed=5)[:, None]
    c = _coefs(p, s, pred)
    x0 = torch.randn(64, 5, generator=g, dtype=torch.float64)
    x_t = torch.randn(64, 5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(
        to_x0(pred, from_x0(pred, x0, x_t, **c), x_t, **c), x0, rtol=1e-10, atol=1e-10
    )


def test_targets_by_hand():
    x0 = torch.tensor([2.0], dtype=torch.float64)
    eps = torch.tensor([-1.0], dtype=torch.float64)
    a, s, ad, sd = (torch.tensor(v, dtype=torch.float64) for v in (0.6, 0.8, -0.5, 0.25))
    assert target("eps", x0, eps, a, s).item() == -1.0
    assert target("x0", x0, eps, a, s).item() == 2.0
    assert target("v", x0, eps, a, s).item() == pytest.approx(0.6 * -1 - 0.8 * 2)
    assert target("score", x0, eps, a, s).item() == pytest.approx(1 / 0.8)
    assert target("velocity", x0, eps, a, s, ad, sd).item() == pytest.approx(-0.5 * 2 + 0.25 * -1)


def test_prediction_types():
    assert set(PREDICTIONS) == {"eps", "x0", "v", "score", "velocity"}
    for name in ("t", "t1000", "t999", "sigma", "log_sigma"):
        assert name in TIME_INPUTS


# --------------------------------------------------------------------------------------------
# Denoiser around fake networks


@pytest.mark.parametrize("name, pred", CASES, ids=IDS)
def test_denoiser_with_perfect_network_returns_x0(name, pred):
    p = _process(name)
    g = _gen(5)
    x0 = torch.randn(16, 3, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(16, 3, 4, generator=g, dtype=torch.float64)
    sigma = _sigmas(p, 16, seed=6)
    den = Denoiser(None, p, prediction=pred)
    tgt = den.target(x0, eps, sigma)
    den.net = lambda x_t, t: tgt
    torch.testing.assert_close(tgt, target(pred, x0, eps, **_coefs(p, sigma[:, None, None], pred)))
    x = x0 + sigma[:, None, None] * eps
    torch.testing.assert_close(den(x, sigma), x0, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", list(PROCESSES))
@pytest.mark.parametrize("time_input", list(TIME_INPUTS))
def test_network_sees_scaled_input_and_time(name, time_input):
    p = _process(name)
    seen = {}

    def net(x_t, time):
        seen["x_t"], seen["time"] = x_t, time
        return torch.zeros_like(x_t)

    den = Denoiser(net, p, prediction="x0", time_input=time_input)
    x = torch.randn(6, 2, generator=_gen(7), dtype=torch.float64)
    sigma = _sigmas(p, 6, seed=8)
    den(x, sigma)
    alpha = p.coefficients(sigma)[0]
    torch.testing.assert_close(seen["x_t"], alpha[:, None] * x, rtol=1e-14, atol=0)
    t = p.t_of(sigma)
    expected = {
        "t": t,
        "t1000": 1000 * t,
        "t999": 999 * t,
        "sigma": sigma,
        "log_sigma": sigma.log() / 4,
    }[time_input]
    torch.testing.assert_close(seen["time"], expected, rtol=1e-14, atol=0)
    torch.testing.assert_close(den.time(sigma), expected, rtol=1e-14, atol=0)
    # a scalar noise level becomes one time per sample
    den(x, float(sigma[0]))
    assert seen["time"].shape == (6,)
    torch.testing.assert_close(seen["time"], expected[:1].expand(6), rtol=1e-14, atol=0)


def test_custom_time_input_and_condition():
    p = Flow()
    seen = {}

    def net(x_t, time, label=None):
        seen["time"], seen["label"] = time, label
        return torch.zeros_like(x_t)

    den = Denoiser(net, p, prediction="x0", time_input=lambda t, s: t + 10 * s)
    sigma = torch.tensor([0.5, 2.0], dtype=torch.float64)
    den(torch.zeros(2, 3, dtype=torch.float64), sigma, label=7)
    torch.testing.assert_close(seen["time"], p.t_of(sigma) + 10 * sigma)
    assert seen["label"] == 7


# --------------------------------------------------------------------------------------------
# Denoiser around networks built from the exact Gaussian mixture


GMM = random_mixture(dim=3, components=3, seed=1)


def _noised(p, n: int, seed: int, cap: float = 80.0):
    g = _gen(seed)
    x0 = GMM.sample(n, generator=g)
    sigma = _sigmas(p, n, seed=seed + 1, cap=cap)
    x = x0 + sigma[:, None] * torch.randn(n, 3, generator=g, dtype=torch.float64)
    return x, sigma


# eps and score networks come both straight from the mixture and through from_x0
MIXTURE_CASES = [(n, p, True) for n, p in CASES] + [
    (n, p, False) for n, p in CASES if p in ("eps", "score")
]


@pytest.mark.parametrize(
    "name, pred, direct",
    MIXTURE_CASES,
    ids=[f"{n}-{p}-{'direct' if d else 'via_from_x0'}" for n, p, d in MIXTURE_CASES],
)
def test_denoiser_reproduces_mixture(name, pred, direct):
    p = _process(name)
    x, sigma = _noised(p, 32, seed=10)
    den = Denoiser(_mixture_net(GMM, p, pred, direct=direct), p, prediction=pred)
    exact = GMM.denoise(x, sigma)
    scale = 1 + x.abs().amax(1, keepdim=True)
    torch.testing.assert_close(den(x, sigma) / scale, exact / scale, rtol=0, atol=1e-10)


@pytest.mark.parametrize("time_input", list(TIME_INPUTS))
@pytest.mark.parametrize("pred", ["eps", "v", "velocity"])
def test_denoiser_reproduces_mixture_any_time_input(time_input, pred):
    p = _process("flow")
    x, sigma = _noised(p, 32, seed=11)
    den = Denoiser(_mixture_net(GMM, p, pred, time_input), p, pred, time_input=time_input)
    scale = 1 + x.abs().amax(1, keepdim=True)
    torch.testing.assert_close(
        den(x, sigma) / scale, GMM.denoise(x, sigma) / scale, rtol=0, atol=1e-10
    )


ZERO_SNR_CASES = [(n, p) for n, p in CASES if n in ZERO_SNR and p in ("x0", "v", "velocity")]


@pytest.mark.parametrize("name, pred", ZERO_SNR_CASES, ids=[f"{n}-{p}" for n, p in ZERO_SNR_CASES])
def test_mixture_at_zero_snr(name, pred):
    """At sigma = inf x holds the unit noise; v / x0 / velocity networks still give E[x0] exactly."""
    p = _process(name)
    x, sigma = _noised(p, 8, seed=12)
    sigma[::2] = math.inf
    x[::2] = torch.randn(4, 3, generator=_gen(13), dtype=torch.float64)
    den = Denoiser(_mixture_net(GMM, p, pred), p, prediction=pred)
    out = den(x, sigma)
    assert bool(torch.isfinite(out).all())
    torch.testing.assert_close(out[::2], GMM.mean.expand(4, 3), rtol=0, atol=1e-12)
    scale = 1 + x[1::2].abs().amax(1, keepdim=True)
    torch.testing.assert_close(
        out[1::2] / scale, GMM.denoise(x[1::2], sigma[1::2]) / scale, rtol=0, atol=1e-10
    )


@pytest.mark.parametrize("name", ZERO_SNR)
def test_v_prediction_at_infinite_sigma_is_minus_v(name):
    p = _process(name)
    seen = {}
    v = torch.randn(5, 2, 3, generator=_gen(14), dtype=torch.float64)

    def net(x_t, time):
        seen["x_t"], seen["time"] = x_t, time
        return v

    x = torch.randn(5, 2, 3, generator=_gen(15), dtype=torch.float64)
    den = Denoiser(net, p, prediction="v")
    out = den(x, math.inf)
    assert not out.isnan().any()
    assert torch.equal(out, -v)
    assert torch.equal(seen["x_t"], x)  # the network sees the unit noise itself
    assert torch.equal(seen["time"], p.t_of(torch.tensor(math.inf)).expand(5))
    # a batch mixing sigma = 0, finite and inf
    sigma = torch.tensor([math.inf, 0.0, 1.5, math.inf, 0.3], dtype=torch.float64)
    out = den(x, sigma)
    assert bool(torch.isfinite(out).all())
    assert torch.equal(out[[0, 3]], -v[[0, 3]])
    torch.testing.assert_close(out[1], x[1], rtol=0, atol=0)
    a, s = p.coefficients(sigma[2])
    x_t = a * x[2]
    torch.testing.assert_close(out[2], (a * x_t - s * v[2]) / (a * a + s * s))


# sigma = 0 lies outside this Interpolant's range (sigma_ve(t_min) = 1e-6 > 0): it is clamped there
ZERO_SIGMA_CASES = [c for c in CASES if c[1] != "x0" and c[0] != "interpolant"]


@pytest.mark.parametrize(
    "name, pred", ZERO_SIGMA_CASES, ids=[f"{n}-{p}" for n, p in ZERO_SIGMA_CASES]
)
def test_identity_at_zero_sigma(name, pred):
    """At sigma = 0, x is clean: every prediction type but x0 returns x whatever the network says
    (also velocity, where sigma_dot is 0 (VE) or inf (VP) at t(sigma = 0))."""
    p = _process(name)
    x = torch.randn(4, 3, generator=_gen(16), dtype=torch.float64)
    junk = torch.randn(4, 3, generator=_gen(17), dtype=torch.float64)
    den = Denoiser(lambda x_t, t: junk, p, prediction=pred)
    out = den(x, 0.0)
    torch.testing.assert_close(out, x, rtol=1e-15, atol=1e-15)
    # clean and noisy elements side by side (diffusion forcing: some tokens already clean)
    sigma = torch.tensor([[0.0, 0.5, 0.0], [2.0, 0.0, 0.1], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    out = den(x, sigma.double())
    assert bool(torch.isfinite(out).all())
    clean = sigma == 0
    torch.testing.assert_close(out[clean], x[clean], rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(out[~clean], den(x, sigma.double().clamp(min=1e-300))[~clean])


# --------------------------------------------------------------------------------------------
# broadcasting of sigma


def _diag_gaussian():
    mean = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
    var = torch.tensor([0.3, 1.0, 0.05, 2.0], dtype=torch.float64)
    return mean, var


def _elementwise_denoise(x, s, mean, var):
    """Exact denoiser of N(mean, diag(var)), one noise level per element (coordinates independent)."""
    return mean + var / (var + s.square()) * (x - mean)


def test_elementwise_reference_is_the_mixture():
    mean, var = _diag_gaussian()
    g = gaussian(mean, torch.diag(var))
    x = torch.randn(7, 4, generator=_gen(18), dtype=torch.float64)
    s = torch.rand(7, generator=_gen(19), dtype=torch.float64) * 3
    torch.testing.assert_close(
        _elementwise_denoise(x, s[:, None], mean, var), g.denoise(x, s), rtol=1e-13, atol=1e-13
    )


@pytest.mark.parametrize("name", ["ddpm", "vp_linear", "flow", "ve"])
@pytest.mark.parametrize("pred", ["eps", "v", "x0", "score"])
def test_per_element_sigma(name, pred):
    """sigma of shape [B, d]: a noise level per coordinate, and the network gets it per element."""
    p = _process(name)
    mean, var = _diag_gaussian()

    def net(x_t, time):
        s = p.sigma_ve(time)  # time is [B, d] here
        c = _coefs(p, s, pred)
        return from_x0(pred, _elementwise_denoise(x_t / c["alpha"], s, mean, var), x_t, **c)

    den = Denoiser(net, p, prediction=pred)
    x = torch.randn(6, 4, generator=_gen(20), dtype=torch.float64) * 3
    s = _sigmas(p, 24, seed=21, cap=30.0).reshape(6, 4)
    torch.testing.assert_close(
        den(x, s), _elementwise_denoise(x, s, mean, var), rtol=1e-10, atol=1e-10
    )


def test_sigma_broadcast_left_aligned():
    """A 1-D sigma is one value per sample even when B equals the trailing size."""
    p = _process("vp_linear")
    g = _gen(22)
    x0 = torch.randn(4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 4, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.1, 0.5, 2.0, 9.0], dtype=torch.float64)
    den = Denoiser(lambda x_t, t: junk_scale * x_t, p, prediction="eps")
    junk_scale = 0.3
    x = x0 + sigma[:, None] * eps
    out = den(x, sigma)
    for i in range(4):
        torch.testing.assert_close(out[i : i + 1], den(x[i : i + 1], sigma[i]))
        torch.testing.assert_close(out[i : i + 1], den(x[i : i + 1], sigma[i : i + 1]))
    # [B] == [B, 1] == per-element [B, d]
    torch.testing.assert_close(out, den(x, sigma[:, None]), rtol=0, atol=0)
    torch.testing.assert_close(out, den(x, sigma[:, None].expand(4, 4)), rtol=0, atol=0)
    # a right-aligned broadcast would use sigma per column: make sure it differs
    assert not torch.allclose(out, den(x, sigma[None, :].expand(4, 4)))


@pytest.mark.parametrize("pred", PREDICTIONS)
def test_sigma_scalar_batch_and_partial_shapes(pred):
    p = _process("trig")
    g = _gen(23)
    x0 = torch.randn(3, 2, 5, 5, generator=g, dtype=torch.float64)
    eps = torch.randn(3, 2, 5, 5, generator=g, dtype=torch.float64)
    for sigma in (
        0.7,
        torch.tensor(0.7, dtype=torch.float64),
        torch.tensor([0.2, 0.7, 3.0], dtype=torch.float64),
        torch.tensor([[0.2, 0.4], [0.7, 1.0], [3.0, 0.05]], dtype=torch.float64),  # per channel
        torch.rand(3, 2, 5, 5, generator=g, dtype=torch.float64) + 0.1,  # per element
    ):
        s = torch.as_tensor(sigma, dtype=torch.float64)
        s_full = s.reshape(*s.shape, *([1] * (4 - s.ndim))).expand_as(x0)
        den = Denoiser(None, p, prediction=pred)
        tgt = den.target(x0, eps, s_full)
        den.net = lambda x_t, t, out=tgt: out
        x = x0 + s_full * eps
        torch.testing.assert_close(den(x, sigma), x0, rtol=1e-10, atol=1e-10)
        tgt_b = den.target(x0, eps, sigma)
        torch.testing.assert_close(tgt_b, tgt, rtol=1e-14, atol=1e-14)


def test_sigma_with_too_many_dims_raises():
    den = Denoiser(lambda x_t, t: x_t, Flow(), prediction="x0")
    with pytest.raises(ValueError, match="sigma"):
        den(torch.zeros(2, 3, dtype=torch.float64), torch.ones(2, 3, 1, dtype=torch.float64))
    for bad in (torch.ones(3), torch.ones(2, 2)):  # neither [B] nor a left-aligned prefix of x
        with pytest.raises(ValueError, match="sigma"):
            den(torch.zeros(2, 3, dtype=torch.float64), bad.double())
        with pytest.raises(ValueError, match="sigma"):
            EDMPrecond(lambda x, c: x)(torch.zeros(2, 3, dtype=torch.float64), bad.double())


def test_float32_input_keeps_dtype():
    p = _process("ddpm")
    x, sigma = _noised(p, 16, seed=24, cap=10.0)
    den = Denoiser(_mixture_net(GMM, p, "v"), p, prediction="v")
    out = den(x.float(), sigma)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), GMM.denoise(x, sigma), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------
# quantized time


def test_quantize_rounds_to_integer_timesteps():
    p = _process("ddpm")
    t = torch.tensor([0.3, 10.5001, 10.4999, 500.7, 998.2], dtype=torch.float64)
    sigma = p.sigma_ve(t)
    den = Denoiser(lambda x_t, time: x_t, p, time_input="t", quantize=True)
    q = den.time(sigma)
    assert q.tolist() == [0.0, 11.0, 10.0, 501.0, 998.0]
    assert torch.equal(q, q.round())
    free = Denoiser(lambda x_t, time: x_t, p, time_input="t")
    torch.testing.assert_close(free.time(sigma), t, rtol=1e-10, atol=0)
    # quantization happens before the time input map
    den999 = Denoiser(lambda x_t, time: x_t, p, time_input="t999", quantize=True)
    assert den999.time(sigma).tolist() == [999 * v for v in (0.0, 11.0, 10.0, 501.0, 998.0)]
    # the network receives the integer timestep, while the scaling uses the true sigma
    seen = {}

    def net(x_t, time):
        seen["time"], seen["x_t"] = time, x_t
        return torch.zeros_like(x_t)

    x = torch.ones(5, 2, dtype=torch.float64)
    Denoiser(net, p, prediction="eps", quantize=True)(x, sigma)
    assert seen["time"].tolist() == [0.0, 11.0, 10.0, 501.0, 998.0]
    torch.testing.assert_close(seen["x_t"], p.coefficients(sigma)[0][:, None] * x)


def test_table_sigmas_give_integer_time_without_quantize():
    p = _process("ddpm")
    den = Denoiser(lambda x_t, time: x_t, p, time_input="t")
    assert torch.equal(den.time(p.sigmas), torch.arange(1000, dtype=torch.float64))


# --------------------------------------------------------------------------------------------
# EDM preconditioning


SIGMA_DATA = [0.5, 1.3]


@pytest.mark.parametrize("sd", SIGMA_DATA)
def test_edm_coefficients(sd):
    pre = EDMPrecond(lambda x, c: x, sigma_data=sd)
    s = torch.logspace(-4, 4, 81, dtype=torch.float64)
    c_skip, c_out, c_in = pre.coefficients(s, 1)
    torch.testing.assert_close(c_skip, sd**2 / (s**2 + sd**2), rtol=1e-13, atol=0)
    torch.testing.assert_close(c_out, s * sd / (s**2 + sd**2).sqrt(), rtol=1e-13, atol=0)
    torch.testing.assert_close(c_in, 1 / (s**2 + sd**2).sqrt(), rtol=1e-13, atol=0)
    torch.testing.assert_close(pre.loss_weight(s) * c_out.square(), torch.ones_like(s))
    # broadcasting to x's rank
    c_skip4, _, _ = pre.coefficients(s[:3], 4)
    assert c_skip4.shape == (3, 1, 1, 1)
    # exact limits
    c_skip, c_out, c_in = pre.coefficients(torch.tensor([0.0, math.inf], dtype=torch.float64), 1)
    assert c_skip.tolist() == [1.0, 0.0]
    assert c_out.tolist() == [0.0, sd]
    assert c_in.tolist() == [pytest.approx(1 / sd, rel=1e-15), 0.0]


def _edm_mixture_net(pre: EDMPrecond, gmm):
    """F = (D - c_skip x) / c_out from the mixture's exact denoiser, seen through (c_in x, c_noise)."""

    def net(x_in, c_noise):
        assert c_noise.shape == (x_in.shape[0],)
        sigma = torch.exp(4 * c_noise)
        c_skip, c_out, c_in = pre.coefficients(sigma, 2)
        x = torch.where(torch.isinf(sigma)[:, None], x_in, x_in / c_in)
        d = gmm.denoise(x, sigma)
        return (d - torch.where(torch.isinf(sigma)[:, None], 0.0, c_skip * x)) / c_out

    return net


@pytest.mark.parametrize("sd", SIGMA_DATA)
def test_edm_precond_reproduces_mixture(sd):
    pre = EDMPrecond(None, sigma_data=sd)
    pre.net = _edm_mixture_net(pre, GMM)
    x, sigma = _noised(EDM(), 64, seed=30, cap=80.0)
    sigma[:4] = torch.tensor([1e-3, 1e-2, 200.0, 1e3], dtype=torch.float64)
    scale = 1 + x.abs().amax(1, keepdim=True)
    torch.testing.assert_close(
        pre(x, sigma) / scale, GMM.denoise(x, sigma) / scale, rtol=0, atol=1e-10
    )
    # scalar sigma
    torch.testing.assert_close(pre(x, 0.8), GMM.denoise(x, 0.8), rtol=1e-10, atol=1e-10)
    # sigma = inf: the prior mean, no NaN
    out = pre(x[:3], math.inf)
    torch.testing.assert_close(out, GMM.mean.expand(3, 3), rtol=0, atol=1e-12)


@pytest.mark.parametrize("sd", SIGMA_DATA)
def test_edm_target_round_trip(sd):
    g = _gen(31)
    x0 = torch.randn(8, 3, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(8, 3, 4, generator=g, dtype=torch.float64)
    sigma = torch.exp(torch.randn(8, generator=g, dtype=torch.float64) * 2)
    pre = EDMPrecond(lambda x_in, c: f, sigma_data=sd)
    f = pre.target(x0, eps, sigma)
    x = x0 + sigma[:, None, None] * eps
    torch.testing.assert_close(pre(x, sigma), x0, rtol=1e-10, atol=1e-10)
    # the target is (x0 - c_skip x) / c_out
    c_skip, c_out, _ = pre.coefficients(sigma, 3)
    torch.testing.assert_close(f, (x0 - c_skip * x) / c_out)
    # and the network input is c_in x with time ln(sigma) / 4
    seen = {}

    def spy(x_in, c_noise):
        seen["x_in"], seen["c_noise"] = x_in, c_noise
        return f

    EDMPrecond(spy, sigma_data=sd)(x, sigma)
    torch.testing.assert_close(seen["x_in"], x / (sigma**2 + sd**2).sqrt()[:, None, None])
    torch.testing.assert_close(seen["c_noise"], sigma.log() / 4)


def test_edm_precond_at_zero_sigma_is_identity():
    x = torch.randn(4, 3, generator=_gen(32), dtype=torch.float64)
    pre = EDMPrecond(lambda x_in, c: torch.randn(4, 3, generator=_gen(33), dtype=x_in.dtype))
    torch.testing.assert_close(pre(x, 0.0), x, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# bad input


def test_unknown_prediction_type_raises():
    z = torch.zeros(2, dtype=torch.float64)
    for fn in (to_x0, from_x0):
        with pytest.raises(ValueError) as info:
            fn("epsilon", z, z, z + 1, z + 1)
        msg = str(info.value)
        assert "epsilon" in msg and "'eps'" in msg
        for name in PREDICTIONS:
            assert name in msg
    with pytest.raises(ValueError, match="Valid names"):
        target("sample", z, z, z, z)
    with pytest.raises(ValueError, match="v_prediction"):
        Denoiser(lambda x, t: x, Flow(), prediction="v_prediction")


def test_unknown_time_input_raises():
    with pytest.raises(ValueError) as info:
        Denoiser(lambda x, t: x, Flow(), time_input="sigmas")
    msg = str(info.value)
    assert "sigmas" in msg and "Did you mean 'sigma'" in msg
    for name in TIME_INPUTS:
        assert name in msg


def test_negative_sigma_raises():
    den = Denoiser(lambda x, t: x, VPLinear(), prediction="x0")
    with pytest.raises(ValueError, match="sigma"):
        den(torch.zeros(2, 3, dtype=torch.float64), torch.tensor([0.5, -0.5]))


def test_public_names():
    assert set(pz.__all__) >= {"Denoiser", "EDMPrecond", "from_x0", "target", "to_x0"}
