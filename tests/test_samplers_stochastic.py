"""Stochastic samplers (DDIM(eta)/DDPM/Euler ancestral, EDM, Restart, ER-SDE, SA-Solver): noise-free
limits against the ODE samplers and the exact flow, k-diffusion with identical noise, NFE, batch
invariance, reproducibility, every grid and dtype, convergence in distribution on an exact
mixture."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from difflab import sampling, schedules
from difflab.core.processes import VPDiscrete
from difflab.sampling.samplers import stochastic
from difflab.testing import random_mixture, ring2d
from difflab.testing.checks import CountingDenoiser, batch_invariance, exponential_grid, nfe_count
from difflab.testing.metrics import sliced_w2, wasserstein2_1d

SAMPLERS = ["ddim_eta", "edm", "restart", "er_sde", "sa_solver"]
ALIASES = {"ddpm": "ddim_eta", "euler_ancestral": "ddim_eta"}
SD = dict(schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def identity(sigma: float) -> float:  # ER-SDE's noise scale for the probability-flow ODE
    return sigma


def square(sigma: float) -> float:  # ER-SDE's noise scale for the DDPM reverse SDE
    return sigma * sigma


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def small() -> tuple:
    mix = random_mixture(2, 2, seed=0)
    g = seeded(0)
    x = mix.sample(16, generator=g) + 10 * torch.randn(16, 2, generator=g, dtype=torch.float64)
    return mix, x, exponential_grid(9, 10.0, 0.05, zero=True)


# ------------------------------------------------------------------------- noise-free limits


def test_registry_entries():
    for name in SAMPLERS:
        entry = sampling.info(name)
        assert entry.stochastic and entry.name == name
    for alias, name in ALIASES.items():
        assert sampling.info(alias) is sampling.info(name)
    assert {n: sampling.info(n).order for n in SAMPLERS} == {
        "ddim_eta": 1, "edm": 2, "restart": 2, "er_sde": 3, "sa_solver": 4
    }  # fmt: skip


def test_noise_free_limits_are_the_ode_samplers(small):
    # on a grid ending above 0: the deterministic samplers' final step into 0 also uses their
    # trajectory's history (AB2 in sigma^2), which a noisy trajectory does not have
    mix, x, grid = small
    grid = grid[:-1]
    get = sampling.get
    euler, heun = get("euler")(mix, x, grid), get("heun")(mix, x, grid)
    assert torch.equal(get("ddim_eta")(mix, x, grid, eta=0.0, generator=seeded()), euler)
    assert torch.equal(get("euler_ancestral")(mix, x, grid, eta=0.0, generator=seeded()), euler)
    assert torch.equal(get("edm")(mix, x, grid, s_churn=0.0, generator=seeded()), heun)
    assert torch.equal(get("restart")(mix, x, grid, restart_k=0, generator=seeded()), heun)
    er = get("er_sde")(mix, x, grid, noise_scaler=identity, max_stage=1, generator=seeded())
    assert torch.equal(er, euler)
    sa = get("sa_solver")(mix, x, grid, eta=0.0, predictor_order=1, corrector_order=0)
    torch.testing.assert_close(sa, euler, rtol=0, atol=1e-13)
    # EDM's churn outside [s_tmin, s_tmax] is no churn
    assert torch.equal(get("edm")(mix, x, grid, s_tmin=20.0, s_tmax=30.0, generator=seeded()), heun)


def test_ddpm_three_ways(small):
    # DDIM(eta = 1) = ER-SDE with phi = sigma^2 = SA-Solver order 1 with tau = 1: the DDPM posterior
    mix, x, grid = small
    ddpm = sampling.get("ddpm")(mix, x, grid, generator=seeded(3))
    er = sampling.get("er_sde")(mix, x, grid, noise_scaler=square, max_stage=1, generator=seeded(3))
    sa = sampling.get("sa_solver")(
        mix, x, grid, predictor_order=1, corrector_order=0, noise_interval=(0, math.inf),
        generator=seeded(3),
    )  # fmt: skip
    torch.testing.assert_close(er, ddpm, rtol=0, atol=1e-13)
    torch.testing.assert_close(sa, ddpm, rtol=0, atol=1e-13)
    assert not torch.equal(ddpm, sampling.get("euler")(mix, x, grid))


def test_ddpm_matches_diffusers_with_the_same_noise():
    # diffusers' DDPMScheduler ("fixed_small" = the posterior variance) in VP coordinates, driven by
    # the exact mixture as an eps-model; its coefficients are float32, hence the tolerance
    schedulers = pytest.importorskip("diffusers.schedulers.scheduling_ddpm")
    sch = schedulers.DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False
    )
    sch.set_timesteps(30)
    abar = sch.alphas_cumprod.double()
    sigmas = [math.sqrt((1 - abar[t]) / abar[t]) for t in sch.timesteps.tolist()] + [0.0]
    mix = random_mixture(2, 2, seed=0)
    x = torch.randn(8, 2, generator=seeded(0), dtype=torch.float64) * sigmas[0]
    xt, g = x * abar[sch.timesteps[0]].sqrt(), seeded(5)
    for t, s in zip(sch.timesteps.tolist(), sigmas):
        xs = xt / abar[t].sqrt()
        eps = (xs - mix(xs, torch.full((8,), s, dtype=torch.float64))) / s
        xt = sch.step(eps, t, xt, generator=g).prev_sample
    ours = sampling.get("ddpm")(mix, x, sigmas, final="denoised", generator=seeded(5))
    torch.testing.assert_close(ours, xt, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def flow() -> tuple:
    # convergence_order's smooth mixture, started at sigma = 80 (EDM's sigma_max), where the
    # multistep samplers' first-order start-up step costs nothing visible: the measured slope is the
    # method's own order. The exact flow is computed once for every case below.
    mix = random_mixture(3, 3, seed=1, scale=1.0, min_variance=0.1)
    g = seeded(0)
    x = mix.sample(64, generator=g) + 80 * torch.randn(64, 3, generator=g, dtype=torch.float64)
    return mix, x, mix.ode(x, 80.0, 0.05, rtol=1e-11).x


ORDERS = [
    ("er_sde", dict(noise_scaler=identity, max_stage=1), 1),
    ("er_sde", dict(noise_scaler=identity, max_stage=2), 2),
    ("er_sde", dict(noise_scaler=identity), 3),
    ("sa_solver", dict(eta=0.0, predictor_order=1, corrector_order=0), 1),
    ("sa_solver", dict(eta=0.0, predictor_order=2, corrector_order=0), 2),
    ("sa_solver", dict(eta=0.0, predictor_order=3, corrector_order=0), 3),
    ("sa_solver", dict(eta=0.0, predictor_order=1, corrector_order=2), 2),
    ("sa_solver", dict(eta=0.0, predictor_order=2, corrector_order=3), 3),
    ("sa_solver", dict(eta=0.0), 4),
    ("sa_solver", dict(eta=0.0, pece=True), 4),
]


@pytest.mark.parametrize(("name", "options", "order"), ORDERS)
def test_noise_free_order_against_the_exact_flow(flow, name, options, order):
    mix, x, exact = flow
    steps = (16, 32, 64, 128)
    errors = [
        float(
            (sampling.get(name)(mix, x, exponential_grid(k, 80.0, 0.05), **options) - exact)
            .square()
            .sum(1)
            .mean()
            .sqrt()
        )
        for k in steps
    ]
    slope = np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert abs(-slope - order) <= 0.3, (slope, errors)


# ------------------------------------------------------------------------- k-diffusion


@pytest.mark.parametrize(("eta", "s_noise"), [(1.0, 1.0), (0.5, 0.8), (1.3, 1.0)])
def test_euler_ancestral_matches_k_diffusion_with_the_same_noise(small, eta, s_noise, k_diffusion):
    k = k_diffusion
    mix, x, grid = small
    ours = sampling.get("euler_ancestral")(
        mix, x, grid, eta=eta, s_noise=s_noise, final="denoised", generator=seeded(3)
    )
    g = seeded(3)
    theirs = k.sample_euler_ancestral(
        mix, x, grid, eta=eta, s_noise=s_noise, disable=True,
        noise_sampler=lambda s, t: torch.randn(x.shape, generator=g, dtype=x.dtype),
    )  # fmt: skip
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    assert stochastic.ancestral_split(2.0, 1.0, eta) == pytest.approx(
        k.get_ancestral_step(2.0, 1.0, eta), abs=1e-15
    )


def test_edm_matches_k_diffusion_heun_with_churn(small, k_diffusion):
    k = k_diffusion
    mix, x, grid = small
    options = dict(s_churn=5.0, s_tmin=0.0, s_tmax=math.inf, s_noise=1.01)
    torch.manual_seed(7)  # both draw torch.randn_like(x) once per step (every step is churned)
    ours = sampling.get("edm")(mix, x, grid, final="denoised", **options)
    torch.manual_seed(7)
    theirs = k.sample_heun(mix, x, grid, disable=True, **options)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------- coefficients


@pytest.mark.parametrize("c", [1e-6, 0.3, 0.999, 1.0, 2.5, 20.0])
def test_stochastic_adams_coefficients_are_exact_integrals(c):
    for nodes in ([-1.0], [0.0, -1.0], [-1.0, -1.7, -2.2], [0.0, -1.0, -1.4, -2.5]):
        b = stochastic.stochastic_adams_coefficients(nodes, c)
        for j, vj in enumerate(nodes):

            def basis(v, j=j, vj=vj, nodes=nodes):
                return math.prod((v - vk) / (vj - vk) for k, vk in enumerate(nodes) if k != j)

            expected = integrate.quad(lambda v: c * math.exp(c * v) * basis(v), -1, 0)[0]
            assert b[j] == pytest.approx(expected, rel=1e-9, abs=1e-14 * max(c, 1e-3))
        assert sum(b) == pytest.approx(-math.expm1(-c), rel=1e-12)


@pytest.mark.parametrize(
    ("s", "t"), [(10.0, 7.0), (10.0, 0.05), (80.0, 0.002), (1000.0, 500.0), (0.1, 0.09)]
)
def test_er_sde_integrals(s, t):
    phi = stochastic.er_sde_noise_scaler
    c1, c2 = stochastic._er_sde_integrals(phi, s, t)
    pt = phi(t)
    kernel = lambda u: pt / phi(u) - 1.0  # noqa: E731
    e1 = integrate.quad(kernel, t, s, limit=200, epsrel=1e-13)[0]
    e2 = integrate.quad(lambda u: (u - s) * kernel(u), t, s, limit=200, epsrel=1e-13)[0]
    assert (c1, c2) == pytest.approx((e1, e2), rel=1e-9)
    # by parts: c1 = (t - s) + phi(t) int 1/phi, the official code's form
    assert c1 == pytest.approx((t - s) + pt * integrate.quad(lambda u: 1 / phi(u), t, s)[0])


# ------------------------------------------------------------------------- NFE, noise, batches


NFE_CASES = [(name, {}) for name in [*SAMPLERS, *ALIASES]] + [
    ("restart", dict(restart_k=3, restart_steps=1)),
    ("restart", dict(restart_k=0)),
    ("sa_solver", dict(pece=True)),
    ("sa_solver", dict(pece=True, corrector_order=0)),
    ("sa_solver", dict(predictor_order=1, corrector_order=1)),
    ("edm", dict(s_churn=0.0)),
    ("er_sde", dict(max_stage=2)),
]


@pytest.mark.parametrize(("name", "options"), NFE_CASES)
def test_nfe_is_exact(name, options):
    entry, sampler = sampling.info(name), sampling.get(name)
    for steps in (1, 2, 3, 4, 5, 6, 7, 20):
        assert nfe_count(sampler, steps, **options) == entry.nfe(steps, **options), steps


def test_nfe_with_an_infinite_start():
    sigmas = schedules.get("uniform_t")(
        8, process=VPDiscrete(rescale_zero_terminal_snr=True), spacing="trailing"
    )
    assert math.isinf(sigmas[0])
    mix = random_mixture(2, 2, seed=0)
    x = torch.randn(16, 2, dtype=torch.float64)  # at sigma = inf, x holds the unit noise
    for name, options in NFE_CASES:
        counter = CountingDenoiser(mix)
        out = sampling.get(name)(counter, x, sigmas, generator=seeded(), **options)
        assert torch.isfinite(out).all(), name
        assert counter.calls == sampling.info(name).nfe(8, infinite_start=True, **options), name


def test_restart_on_a_grid_above_restart_max():
    # its only inner level (5) lies above restart_max: it restarts from 5 to 5 * 0.3 / 0.06 = 25
    counter = CountingDenoiser(random_mixture(2, 2, seed=0))
    out = sampling.get("restart")(counter, torch.randn(4, 2) * 10, [10.0, 5.0, 0.0])
    assert torch.isfinite(out).all() and counter.calls == sampling.info("restart").nfe(2) == 11


def test_restart_runs_down_the_karras_grid():
    """Restart's inner levels from t_max back to t_min are the Karras grid of core.grids (rho 7),
    the one Karras formula: every level it evaluates lies on the main grid or on that one."""
    seen: set[float] = set()
    mix = random_mixture(2, 2, seed=0)

    def denoiser(x, sigma):
        seen.add(float(sigma[0]))
        return mix(x, sigma)

    grid = [10.0, 2.0, 0.06, 0.0]
    sampling.get("restart")(denoiser, torch.randn(4, 2, dtype=torch.float64), grid, restart_steps=3)
    inner = schedules.karras(4, 0.06, 0.30, append_zero=False).tolist()
    assert seen == {10.0, 2.0, 0.06, *inner}


@pytest.mark.parametrize(("name", "options"), [(n, {}) for n in SAMPLERS] + NFE_CASES[-5:-2])
def test_batch_invariance_with_per_sample_generators(name, options):
    assert batch_invariance(sampling.get(name), stochastic=True, **options) == 0


@pytest.mark.parametrize("name", SAMPLERS)
def test_seeded_generator_reproduces(small, name):
    mix, x, grid = small
    sampler = sampling.get(name)
    runs = [sampler(mix, x, grid, generator=seeded(s)) for s in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    per_sample = [sampler(mix, x, grid, generator=sampling.generators(5, len(x))) for _ in "ab"]
    assert torch.equal(*per_sample)


def test_callback_sees_the_grid_steps():
    mix = random_mixture(2, 2, seed=0)
    sigmas = schedules.get("exponential")(5, 0.05, 10.0)
    x = torch.randn(3, 2, dtype=torch.float64) * 10
    for name in SAMPLERS:
        seen: list[float] = []
        options = {"s_churn": 0.0} if name == "edm" else {}  # a churned step starts off the grid
        sampling.get(name)(mix, x, sigmas, generator=seeded(), callback=_recorder(seen), **options)
        assert seen == sigmas[:-1].tolist(), name


def _recorder(seen: list[float]):
    return lambda i, sigma, x, denoised: seen.append(sigma)


# ------------------------------------------------------------------------- grids, dtypes, few steps

PROCESS = VPDiscrete(**SD)


def _grid_options(name: str, steps: int) -> dict:
    if name == "explicit":
        return {"sigmas": schedules.karras(steps, 0.1, 10.0)[:-1].tolist()}
    return {}


@pytest.mark.parametrize("grid_name", schedules.available())
def test_every_grid_runs_in_float32(grid_name):
    mix = ring2d()
    configs = [{"process": PROCESS}]
    if grid_name not in {"simple", "ddim_uniform", "ays", "explicit"}:
        lo = {} if grid_name == "linear_quadratic" else {"sigma_min": 0.05}  # it has no sigma_min
        configs.append({**lo, "sigma_max": 10.0, "process": PROCESS})
    for kwargs in configs:
        sigmas = schedules.get(grid_name)(6, **kwargs, **_grid_options(grid_name, 6))
        x = (torch.randn(8, 2, generator=seeded(), dtype=torch.float64) * sigmas[0]).float()
        for name in SAMPLERS:
            out = sampling.get(name)(mix, x, sigmas, generator=seeded())
            assert out.dtype == torch.float32 and torch.isfinite(out).all(), (name, kwargs)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_dtype_is_kept(dtype):
    mix = random_mixture(2, 2, seed=0)

    def denoiser(x, sigma):  # the exact model in float64, answered in x's dtype
        assert x.dtype == dtype and sigma.dtype == dtype
        return mix(x.double(), sigma.double()).to(dtype)

    sigmas = schedules.get("karras")(6, 0.01, 20.0)
    x = (torch.randn(4, 2, generator=seeded(), dtype=torch.float64) * 20).to(dtype)
    for name in SAMPLERS:
        out = sampling.get(name)(denoiser, x, sigmas, generator=seeded())
        assert out.dtype == dtype and torch.isfinite(out.float()).all(), name


@pytest.mark.parametrize("steps", [1, 2])
def test_fewer_steps_than_the_order(steps):
    mix = random_mixture(2, 2, seed=0)
    x = torch.randn(64, 2, generator=seeded(), dtype=torch.float64) * 10
    sigmas = schedules.get("karras")(steps, 0.02, 10.0)
    for name in SAMPLERS:
        out = sampling.get(name)(mix, x, sigmas, generator=seeded())
        assert torch.isfinite(out).all(), name
        # no blow-up (Heun's second stage over a 500x step overshoots, as heun's does)
        assert out.norm(dim=1).max() < 5 * x.norm(dim=1).max(), name


def test_bad_options_are_named(small):
    mix, x, grid = small
    cases = [
        ("ddim_eta", dict(eta=-1.0), "eta must be >= 0"),
        ("edm", dict(final="magic"), "unknown final step"),
        ("restart", dict(restart_min=0.5, restart_max=0.3), "restart_min < restart_max"),
        ("er_sde", dict(max_stage=4), "max_stage must be"),
        ("er_sde", dict(noise_scaler=math.sqrt), "non-decreasing"),
        ("sa_solver", dict(predictor_order=0), "predictor_order >= 1"),
        ("sa_solver", dict(order=3), "option for sampler 'sa_solver'"),
    ]
    for name, options, message in cases:
        with pytest.raises(ValueError, match=message):
            sampling.get(name)(mix, x, grid, **options)


# ------------------------------------------------------------------------- in distribution


def test_sliced_w2():
    g = seeded(0)
    a = torch.randn(300, 3, generator=g, dtype=torch.float64)
    assert sliced_w2(a, a[torch.randperm(300, generator=g)]) == 0
    # a shift by v: every projection moves by u.v, so SW2^2 = E (u.v)^2 = |v|^2 / d
    shifted = sliced_w2(a, a + 1.0, projections=4096, generator=g)
    assert shifted == pytest.approx(1.0, rel=0.05)
    # unequal sizes: the exact 1-D quantile integral
    b = torch.randn(7, 2, generator=g, dtype=torch.float64)
    c = torch.randn(5, 2, generator=g, dtype=torch.float64) + 1
    q = (torch.arange(35_000, dtype=torch.float64) + 0.5) / 35_000
    brute = (b.sort(0).values[(q * 7).long()] - c.sort(0).values[(q * 5).long()]).square()
    torch.testing.assert_close(wasserstein2_1d(b, c), brute.mean(0).sqrt())
    with pytest.raises(ValueError, match="different dimensions"):
        sliced_w2(a, b)


@pytest.fixture(scope="module")
def ring() -> dict:
    # 4000 exact samples of the 8-mode ring (std 0.05) noised to sigma = 20: exactly p_20, so the
    # samplers' only error is their own; karras grids down to 0.02, then final_step to 0
    mix, n = ring2d(), 4000
    g = seeded(0)
    ll_exact = float(mix.log_prob(mix.sample(50_000, generator=g), 0).mean())
    reference = mix.sample(n, generator=g)
    x = mix.sample(n, generator=g) + 20 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    floor = sliced_w2(mix.sample(n, generator=g), reference, 64, seeded(1))
    return dict(mix=mix, x=x, reference=reference, ll=ll_exact, floor=floor)


# (sampler, options, enough steps). At enough steps the mean log-likelihood is within 0.12 nats of
# exact samples' (measured 0.02-0.07; a 10% error in the noise scale moves it by 0.1-0.3 nats for
# all but ER-SDE, whose noise is small) and SW2 is below the floor of two independent exact sets
# (~0.06); at 4 steps both are far worse.
IN_DISTRIBUTION = [
    ("ddim_eta", {}, 128),  # first order in distribution: it needs the most steps
    ("ddim_eta", dict(eta=0.5), 64),
    ("edm", {}, 64),
    ("restart", {}, 48),
    ("er_sde", {}, 64),
    ("sa_solver", {}, 64),
    ("sa_solver", dict(noise_interval=(0.0, math.inf)), 64),
]


@pytest.mark.parametrize(("name", "options", "steps"), IN_DISTRIBUTION)
def test_converges_in_distribution(ring, name, options, steps):
    mix, sampler = ring["mix"], sampling.get(name)

    def measure(n: int) -> tuple[float, float]:
        y = sampler(mix, ring["x"], schedules.karras(n, 0.02, 20.0), generator=seeded(), **options)
        gap = float(mix.log_prob(y, 0).mean()) - ring["ll"]
        return gap, sliced_w2(y, ring["reference"], 64, seeded(1))

    (gap_few, sw2_few), (gap, sw2) = measure(4), measure(steps)
    assert ring["floor"] < 0.08
    assert abs(gap) < 0.12, (gap_few, gap)
    assert abs(gap_few) > 4 * abs(gap) and abs(gap_few) > 0.5, (gap_few, gap)
    assert sw2 < 0.08 and sw2 < sw2_few, (sw2_few, sw2)
