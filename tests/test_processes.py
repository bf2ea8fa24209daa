"""Forward processes: sigma_ve / t_of are inverse bijections, the network-input coefficients are exact
(also at sigma = 0 and sigma = inf), the derivatives are the derivatives, DDPM tables match diffusers,
and configs round-trip. Everything in float64."""

from __future__ import annotations

import json
import math

import pytest
import torch

from difflab.core import processes
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

SD = dict(schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
DISCRETE = {
    "ddpm_linear": lambda: VPDiscrete(schedule="linear"),
    "ddpm_scaled_linear": lambda: VPDiscrete(**SD),
    "ddpm_cosine": lambda: VPDiscrete(schedule="squaredcos_cap_v2"),
    "ddpm_zero_snr": lambda: VPDiscrete(**SD, rescale_zero_terminal_snr=True),
}
CONTINUOUS = {
    "vp_linear": lambda: VPLinear(),
    "vp_cosine": lambda: VPCosine(),
    "ve": lambda: VE(),
    "edm": lambda: EDM(),
    "flow": lambda: Flow(),
    "flow_shift3": lambda: Flow(shift=3.0),
    "trig": lambda: Trig(),
    "interpolant_poly": lambda: Interpolant(
        lambda t: 1 - t, lambda t: t**2, t_min=1e-3, t_max=0.999
    ),
    "interpolant_trig": lambda: Interpolant(
        lambda t: torch.cos(t), lambda t: torch.sin(t) + t**3, t_min=0.01, t_max=1.5
    ),
}
ALL = {**DISCRETE, **CONTINUOUS}
# processes whose coefficients have closed-form limits at sigma_ve = 0 and sigma_ve = inf
LIMITS = [
    *DISCRETE,
    "vp_linear",
    "vp_cosine",
    "flow",
    "flow_shift3",
    "trig",
]
DIFFERENTIABLE = [name for name in CONTINUOUS]
SERIALIZABLE = [name for name in ALL if not name.startswith("interpolant")]


@pytest.fixture(params=list(ALL), scope="module")
def proc(request):
    return request.param, ALL[request.param]()


def _t_grid(p, n: int = 4001) -> torch.Tensor:
    """A dense grid of t in [t_min, t_max] (both ends included), with sigma_ve finite on it except
    possibly at t_max. Interpolants invert by 64 bisection steps, so they get a coarser grid."""
    if isinstance(p, Interpolant):
        n = min(n, 401)
    return torch.linspace(p.t_min, p.t_max, n, dtype=torch.float64)


def _interior(p, n: int = 2001) -> torch.Tensor:
    """t strictly inside (t_min, t_max)."""
    return _t_grid(p, n + 2)[1:-1]


def _sigma_grid(p, n: int = 3001, cap: float = 1e4) -> torch.Tensor:
    """sigma_ve log-spaced over [sigma_min, min(sigma_max, cap)].

    The cap keeps sigma_ve(t) well conditioned: near t -> t_max of flow / trig, a relative error eps
    in t becomes a relative error ~ sigma eps in sigma_ve, which no float64 inverse can beat.
    """
    lo = max(p.sigma_min, 1e-6)
    hi = min(p.sigma_max, cap)
    if isinstance(p, Interpolant):
        n = min(n, 301)
    return torch.logspace(math.log10(lo), math.log10(hi), n, dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# sigma_ve <-> t


def test_sigma_ve_increasing_and_positive(proc):
    _, p = proc
    s = p.sigma_ve(_t_grid(p))
    assert s.dtype == torch.float64
    assert not s.isnan().any()
    assert bool((s[1:] > s[:-1]).all())
    assert bool((s >= 0).all())
    assert p.sigma_min == pytest.approx(float(s[0]), rel=1e-14)
    assert p.sigma_max == pytest.approx(float(s[-1]), rel=1e-14)


def test_t_of_inverts_sigma_ve(proc):
    _, p = proc
    t = _t_grid(p)
    back = p.t_of(p.sigma_ve(t))
    torch.testing.assert_close(back, t, rtol=1e-10, atol=0)


def test_sigma_ve_inverts_t_of(proc):
    _, p = proc
    s = _sigma_grid(p)
    torch.testing.assert_close(p.sigma_ve(p.t_of(s)), s, rtol=1e-10, atol=0)


def test_t_of_monotone_on_sigma_grid(proc):
    _, p = proc
    t = p.t_of(_sigma_grid(p))
    assert bool((t[1:] > t[:-1]).all())
    assert float(t[0]) >= p.t_min - 1e-12 and float(t[-1]) <= p.t_max + 1e-12


def test_shapes_and_python_scalars(proc):
    _, p = proc
    t = _interior(p, 24).reshape(2, 3, 4)
    s = p.sigma_ve(t)
    assert s.shape == (2, 3, 4)
    assert p.t_of(s).shape == (2, 3, 4)
    a, sig = p.coefficients(s)
    assert a.shape == sig.shape == (2, 3, 4)
    # a python float is accepted everywhere and treated as float64
    t0 = float(t[0, 1, 2])
    assert float(p.sigma_ve(t0)) == float(s[0, 1, 2])
    assert float(p.t_of(float(s[0, 1, 2]))) == pytest.approx(t0, rel=1e-10)


# --------------------------------------------------------------------------------------------
# coefficients


def test_coefficients_match_alpha_sigma(proc):
    _, p = proc
    t = _t_grid(p)
    a, s = p.coefficients(p.sigma_ve(t))
    torch.testing.assert_close(a, p.alpha(t), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(s, p.sigma(t), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(p.scale(p.sigma_ve(t)), p.alpha(t), rtol=1e-10, atol=1e-12)


def test_coefficients_reconstruct_sigma_ve(proc):
    _, p = proc
    s = _sigma_grid(p)
    a, sig = p.coefficients(s)
    torch.testing.assert_close(sig / a, s, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", LIMITS)
def test_coefficients_exact_at_zero_and_inf(name):
    p = ALL[name]()
    a, s = p.coefficients(torch.tensor([0.0, math.inf], dtype=torch.float64))
    assert not a.isnan().any() and not s.isnan().any()
    assert a.tolist() == [1.0, 0.0]
    assert s.tolist() == [0.0, 1.0]


@pytest.mark.parametrize("name", ["ve", "edm"])
def test_exploding_coefficients(name):
    p = ALL[name]()
    s = torch.tensor([0.0, 0.3, 7.0, math.inf], dtype=torch.float64)
    a, sig = p.coefficients(s)
    assert a.tolist() == [1.0] * 4
    assert sig.tolist() == s.tolist()


@pytest.mark.parametrize("name", [n for n in LIMITS if n not in ("flow", "flow_shift3")])
def test_vp_preserves_variance(name):
    p = ALL[name]()
    t = _t_grid(p)
    torch.testing.assert_close(
        p.alpha(t).square() + p.sigma(t).square(), torch.ones_like(t), rtol=0, atol=1e-14
    )
    a, s = p.coefficients(_sigma_grid(p))
    torch.testing.assert_close(a.square() + s.square(), torch.ones_like(a), rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", ["flow", "flow_shift3"])
def test_flow_coefficients_sum_to_one(name):
    p = ALL[name]()
    s = torch.cat([_sigma_grid(p), torch.tensor([0.0, math.inf], dtype=torch.float64)])
    a, sig = p.coefficients(s)
    torch.testing.assert_close(a + sig, torch.ones_like(a), rtol=0, atol=1e-15)
    t = _t_grid(p)
    torch.testing.assert_close(p.sigma_ve(t)[:-1], (t / (1 - t))[:-1], rtol=1e-14, atol=0)


def test_closed_forms():
    t = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    torch.testing.assert_close(Trig().sigma_ve(t), torch.tan(t * math.pi / 2), rtol=1e-13, atol=0)
    vp = VPLinear(beta_min=0.1, beta_max=20.0)
    log_alpha = -0.25 * t**2 * 19.9 - 0.5 * t * 0.1
    torch.testing.assert_close(vp.alpha(t), log_alpha.exp(), rtol=1e-14, atol=0)
    torch.testing.assert_close(VE(0.01, 50.0).sigma_ve(t), 0.01 * 5000.0**t, rtol=1e-13, atol=0)
    cos = VPCosine()
    f = lambda u: torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    torch.testing.assert_close(
        cos.alpha(t).square(), f(t) / f(torch.zeros((), dtype=torch.float64)), rtol=1e-13, atol=0
    )
    assert float(VPCosine().alpha(torch.tensor(0.0))) == 1.0


def test_log_snr(proc):
    _, p = proc
    t = _interior(p)
    a, s = p.alpha(t), p.sigma(t)
    torch.testing.assert_close(
        p.log_snr(t), torch.log(a.square() / s.square()), rtol=1e-10, atol=1e-10
    )
    lam = p.log_snr(t)
    assert bool((lam[1:] < lam[:-1]).all())


# --------------------------------------------------------------------------------------------
# derivatives


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_derivatives_match_autograd(name):
    p = ALL[name]()
    t = _interior(p, 257).clone().requires_grad_(True)
    for fn, dot in ((p.alpha, p.alpha_dot), (p.sigma, p.sigma_dot)):
        out = fn(t)
        if out.requires_grad:
            (grad,) = torch.autograd.grad(out.sum(), t)
        else:  # a constant (alpha = 1 of VE / EDM)
            assert torch.equal(out, torch.ones_like(out))
            grad = torch.zeros_like(out)
        torch.testing.assert_close(dot(t.detach()), grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_derivatives_match_finite_differences(name):
    p = ALL[name]()
    t = _interior(p, 257)
    # stay inside the domain for the central difference
    h = 1e-6 * (p.t_max - p.t_min)
    t = t.clamp(p.t_min + 2 * h, p.t_max - 2 * h)
    for fn, dot in ((p.alpha, p.alpha_dot), (p.sigma, p.sigma_dot)):
        fd = (fn(t + h) - fn(t - h)) / (2 * h)
        scale = fd.abs().max()
        torch.testing.assert_close(dot(t), fd, rtol=1e-6, atol=1e-7 * float(scale))


def test_known_derivatives():
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    f = Flow()
    assert f.alpha_dot(t).tolist() == [-1.0] * 3 and f.sigma_dot(t).tolist() == [1.0] * 3
    e = EDM()
    assert e.alpha_dot(t).tolist() == [0.0] * 3 and e.sigma_dot(t).tolist() == [1.0] * 3
    tr = Trig()
    torch.testing.assert_close(tr.sigma_dot(t), math.pi / 2 * torch.cos(t * math.pi / 2))
    # Trig's alpha_dot and sigma_dot stay finite and exact at t = 1 (zero SNR)
    one = torch.tensor(1.0, dtype=torch.float64)
    assert tr.alpha_dot(one).item() == pytest.approx(-math.pi / 2, rel=1e-15)
    assert tr.sigma_dot(one).item() == 0.0


def test_discrete_has_no_derivative():
    p = VPDiscrete()
    with pytest.raises(NotImplementedError, match="vp_discrete"):
        p.alpha_dot(torch.tensor(3.0))
    with pytest.raises(NotImplementedError, match="vp_discrete"):
        p.sigma_dot(torch.tensor(3.0))


# --------------------------------------------------------------------------------------------
# DDPM tables


def _diffusers_table(schedule: str, rescale: bool, **kw) -> torch.Tensor:
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_schedule=schedule, rescale_betas_zero_snr=rescale, **kw
    )
    return sched.alphas_cumprod


@pytest.mark.parametrize(
    "kw, rescale",
    [
        (dict(schedule="linear"), False),
        (SD, False),
        (dict(schedule="squaredcos_cap_v2"), False),
        (SD, True),
        (dict(schedule="linear"), True),
    ],
    ids=[
        "linear",
        "scaled_linear",
        "squaredcos_cap_v2",
        "scaled_linear_zero_snr",
        "linear_zero_snr",
    ],
)
def test_alphas_cumprod_match_diffusers(kw, rescale):
    kw = dict(kw)
    schedule = kw.pop("schedule")
    theirs = _diffusers_table(schedule, rescale, **kw)
    p = VPDiscrete(schedule=schedule, rescale_zero_terminal_snr=rescale, **kw)
    ours = p.alphas_cumprod
    assert ours.dtype == torch.float64 and ours.shape == (1000,)
    # diffusers accumulates the product in float32: a few float32 ulps of 1 over 1000 factors
    torch.testing.assert_close(ours.float(), theirs, rtol=2e-6, atol=1e-6)
    if rescale:
        assert float(ours[-1]) == 0.0 == float(theirs[-1])
    else:
        # relative agreement everywhere, including the tiny tail of squaredcos_cap_v2 (where the
        # float32 rounding of the clamped beta = 0.999 alone is 1.3e-5 of 1 - beta)
        assert float(((ours - theirs.double()).abs() / ours).max()) < 2e-5
    # the table also drives the process: alpha(i)^2 and sigma_ve(i) come from it exactly
    i = torch.arange(1000, dtype=torch.float64)
    assert torch.equal(p.alpha(i).square(), ours.sqrt().square())


def test_ddpm_betas_formulas():
    b = processes.ddpm_betas("linear", 10, 0.1, 0.2)
    torch.testing.assert_close(b, torch.linspace(0.1, 0.2, 10, dtype=torch.float64))
    b = processes.ddpm_betas("scaled_linear", 5, 0.01, 0.04)
    torch.testing.assert_close(b, torch.linspace(0.1, 0.2, 5, dtype=torch.float64) ** 2)
    b = processes.ddpm_betas("squaredcos_cap_v2", 1000)
    assert float(b.max()) <= 0.999 and float(b[-1]) == 0.999
    ac = processes.ddpm_alphas_cumprod(torch.tensor([0.1, 0.2, 0.5], dtype=torch.float64))
    torch.testing.assert_close(ac, torch.tensor([0.9, 0.72, 0.36], dtype=torch.float64))
    with pytest.raises(ValueError, match="scaled_linear"):
        processes.ddpm_betas("scaled_linaer")


@pytest.mark.parametrize("name", list(DISCRETE))
def test_table_sigmas_map_to_exact_timesteps(name):
    p = DISCRETE[name]()
    n = p.num_train_timesteps
    i = torch.arange(n, dtype=torch.float64)
    assert torch.equal(p.t_of(p.sigmas), i)
    assert torch.equal(p.sigma_ve(i), p.sigmas)
    torch.testing.assert_close(p.sigmas, ((1 - p.alphas_cumprod) / p.alphas_cumprod).sqrt())
    # one at a time, as scalars, and as float32 input
    for k in (0, 1, 500, n - 2, n - 1):
        assert float(p.t_of(p.sigmas[k])) == k
        assert float(p.sigma_ve(torch.tensor(float(k), dtype=torch.float64))) == float(p.sigmas[k])
    # float32 input keeps its dtype (the rounded sigma lands next to, not on, the timestep)
    t32 = p.t_of(p.sigmas[:-1].float())
    assert t32.dtype == torch.float32
    torch.testing.assert_close(t32, i[:-1].float(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", list(DISCRETE))
def test_fractional_timesteps_interpolate_log_sigma(name):
    p = DISCRETE[name]()
    k = torch.arange(0, p.num_train_timesteps - 2, 37, dtype=torch.float64)
    for w in (0.25, 0.5, 0.9):
        s = p.sigma_ve(k + w)
        expected = torch.exp((1 - w) * p.log_sigmas[k.long()] + w * p.log_sigmas[k.long() + 1])
        torch.testing.assert_close(s, expected, rtol=1e-13, atol=0)
        assert bool((s > p.sigmas[k.long()]).all() and (s < p.sigmas[k.long() + 1]).all())


def test_discrete_clamps_outside_table():
    p = VPDiscrete()
    assert float(p.t_of(torch.tensor(0.0))) == 0.0
    assert float(p.t_of(torch.tensor(1e9))) == 999.0
    below = torch.tensor(-3.0, dtype=torch.float64)
    assert float(p.sigma_ve(below)) == float(p.sigmas[0])
    assert float(p.sigma_ve(torch.tensor(2000.0, dtype=torch.float64))) == float(p.sigmas[-1])


def test_explicit_table():
    table = [0.99, 0.9, 0.5, 0.1]
    p = VPDiscrete(alphas_cumprod=table)
    assert p.num_train_timesteps == 4 and p.t_max == 3.0
    assert torch.equal(p.t_of(p.sigmas), torch.arange(4, dtype=torch.float64))
    assert p.alphas_cumprod.tolist() == table
    for bad in ([0.5, 0.9], [[0.9, 0.5]], [0.9]):
        with pytest.raises(ValueError, match="alphas_cumprod"):
            VPDiscrete(alphas_cumprod=bad)


def test_zero_terminal_snr():
    p = DISCRETE["ddpm_zero_snr"]()
    n = p.num_train_timesteps
    assert p.zero_terminal_snr and not VPDiscrete(**SD).zero_terminal_snr
    assert p.sigma_max == math.inf
    assert math.isinf(float(p.sigmas[-1])) and bool(torch.isfinite(p.sigmas[:-1]).all())
    assert float(p.t_of(torch.tensor(math.inf))) == n - 1
    assert float(p.alpha(torch.tensor(float(n - 1)))) == 0.0
    assert float(p.sigma(torch.tensor(float(n - 1)))) == 1.0
    a, s = p.coefficients(torch.tensor(math.inf))
    assert (float(a), float(s)) == (0.0, 1.0)
    assert math.isinf(float(p.sigma_ve(torch.tensor(float(n - 1)))))
    # the last interval: alpha is linear in t, sigma_ve finite, increasing, and inverted by t_of
    t = torch.linspace(n - 2, n - 1, 1001, dtype=torch.float64)[:-1]
    s = p.sigma_ve(t)
    assert bool(torch.isfinite(s).all())
    assert bool((s[1:] > s[:-1]).all())
    assert float(s[0]) == float(p.sigmas[-2])
    a_prev = p.sqrt_alphas_cumprod[-2]
    torch.testing.assert_close(p.alpha(t), a_prev * (n - 1 - t), rtol=1e-14, atol=1e-17)
    torch.testing.assert_close(p.t_of(s), t, rtol=1e-12, atol=0)
    # continuity across t = n - 2 on both sides
    eps = 1e-9
    left = p.sigma_ve(torch.tensor(n - 2 - eps, dtype=torch.float64))
    right = p.sigma_ve(torch.tensor(n - 2 + eps, dtype=torch.float64))
    assert float((right - left) / p.sigmas[-2]) == pytest.approx(0.0, abs=1e-6)
    assert float(left) < float(p.sigmas[-2]) < float(right)
    # huge but finite sigma lands just below n - 1
    big = p.sigmas[-2] * torch.tensor([1.5, 1e3, 1e6], dtype=torch.float64)
    tb = p.t_of(big)
    assert bool((tb < n - 1).all() and (tb > n - 2).all()) and bool((tb[1:] > tb[:-1]).all())
    torch.testing.assert_close(p.sigma_ve(tb), big, rtol=1e-6, atol=0)


# --------------------------------------------------------------------------------------------
# registry and configs


@pytest.mark.parametrize("name", SERIALIZABLE)
@pytest.mark.parametrize("via_json", [False, True])
def test_config_round_trip(name, via_json):
    p = ALL[name]()
    cfg = p.config()
    if via_json:
        cfg = json.loads(json.dumps(cfg))
    q = processes.from_config(cfg)
    assert type(q) is type(p)
    assert q.config() == p.config()
    t = _t_grid(p, 513)
    assert torch.equal(q.sigma_ve(t), p.sigma_ve(t))
    assert (q.t_min, q.t_max) == (p.t_min, p.t_max)
    assert repr(q) == repr(p)


def test_config_round_trip_explicit_table_and_non_defaults():
    for p in (
        VPDiscrete(alphas_cumprod=VPDiscrete(**SD).alphas_cumprod[:50]),
        VPLinear(beta_min=0.2, beta_max=12.0, t_min=1e-4, t_max=0.9),
        VE(sigma_min=0.002, sigma_max=300.0),
        Flow(shift=2.5, t_min=0.0, t_max=0.99),
        VPDiscrete(schedule="linear", num_train_timesteps=100, beta_end=0.03),
    ):
        q = processes.from_config(json.loads(json.dumps(p.config())))
        t = _t_grid(p, 257)
        assert torch.equal(q.sigma_ve(t), p.sigma_ve(t)), p
        assert q.config() == p.config()
        assert (q.t_min, q.t_max, q.sigma_min, q.sigma_max) == (
            p.t_min,
            p.t_max,
            p.sigma_min,
            p.sigma_max,
        )
        assert getattr(q, "shift", None) == getattr(p, "shift", None)


def test_interpolant_has_no_config():
    with pytest.raises(TypeError):
        ALL["interpolant_poly"]().config()


def test_get_and_aliases():
    assert isinstance(processes.get("ddpm"), VPDiscrete)
    assert isinstance(processes.get("rectified_flow", shift=3.0), Flow)
    assert isinstance(processes.get("cosine_interpolant"), Trig)
    p = processes.get("vp_discrete", **SD)
    assert torch.equal(p.alphas_cumprod, VPDiscrete(**SD).alphas_cumprod)
    names = processes.available()
    assert names == sorted(names)
    for name in ("vp_discrete", "vp_linear", "vp_cosine", "ve", "edm", "flow", "trig", "ddpm"):
        assert name in names
        assert isinstance(processes.get(name), processes.Process)


def test_get_unknown_name_lists_valid_and_suggests():
    with pytest.raises(ValueError) as info:
        processes.get("vp_discrte")
    msg = str(info.value)
    assert "vp_discrte" in msg
    assert "Did you mean 'vp_discrete'" in msg
    for name in processes.available():
        assert name in msg
    with pytest.raises(ValueError, match="Valid names"):
        processes.get("zzzzzz")


def test_get_bad_parameters():
    with pytest.raises(ValueError, match="edm"):
        processes.get("edm", beta_max=3.0)
    with pytest.raises(ValueError, match="name"):
        processes.from_config({"sigma_min": 0.1})


# --------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("bad", [-1.0, -1e-12, math.nan])
def test_negative_sigma_raises(proc, bad):
    _, p = proc
    s = torch.tensor([0.5, bad], dtype=torch.float64)
    with pytest.raises(ValueError, match="sigma"):
        p.t_of(s)
    with pytest.raises(ValueError, match="sigma"):
        p.coefficients(s)
    with pytest.raises(ValueError, match="sigma"):
        p.t_of(bad)


@pytest.mark.parametrize("shift", [0.0, -1.0])
def test_flow_nonpositive_shift_raises(shift):
    with pytest.raises(ValueError, match="shift"):
        Flow(shift=shift)
    with pytest.raises(ValueError, match="shift"):
        processes.get("flow", shift=shift)
