"""Multistep samplers (unipc, deis, ipndm, lms): measured order against the exact probability-flow
ODE, NFE honesty, batch invariance, every grid and dtype, exact coefficients, and agreement with
diffusers, k-diffusion and ComfyUI (tests that skip when the library is missing).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from scipy import integrate

from difflab import sampling, schedules
from difflab.core.processes import VPDiscrete
from difflab.sampling.samplers import multistep
from difflab.sampling.steps import phis
from difflab.testing import random_mixture
from difflab.testing.checks import CountingDenoiser, batch_invariance, nfe_count

NAMES = ("unipc", "deis", "ipndm", "lms")
SD = dict(schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
PROCESS = VPDiscrete(**SD)
ZERO_SNR = VPDiscrete(**SD, rescale_zero_terminal_snr=True)
DIFFUSERS_BETAS = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
F64 = torch.float64


def _rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).square().sum(1).mean().sqrt())


# --------------------------------------------------------------------------------------------
# measured order against the exact flow

SMOOTH = random_mixture(3, 3, seed=1, scale=1.0, min_variance=0.1)  # checks.convergence_order's
SIGMA_MAX = 10.0


@functools.cache
def _problem(sigma_min: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A start at SIGMA_MAX and its exact flow to sigma_min (computed once per module)."""
    g = torch.Generator().manual_seed(0)
    x = SMOOTH.sample(32, generator=g) + SIGMA_MAX * torch.randn(32, 3, generator=g, dtype=F64)
    return x, SMOOTH.ode(x, SIGMA_MAX, sigma_min, rtol=1e-11).x


def _grid(steps: int, coordinate: str, sigma_min: float, startup: int) -> torch.Tensor:
    """``steps`` intervals from SIGMA_MAX to sigma_min, uniform in log sigma or in sigma, preceded
    by startup - 2 start-up steps delta^2 / 4 long (delta the spacing). A step of order k has local
    error O(delta^(k+1)); with the tiny start-up steps only the last start-up step (order - 1, local
    error O(delta^order)) has full length, so the slope measures the order of the multistep formula.
    On an unrefined grid the first (first-order) step contributes O(delta^2): see
    test_start_up_limits_the_order_on_plain_grids.
    """
    to_u, from_u = (math.log, math.exp) if coordinate == "log" else (float, float)
    a, b = to_u(SIGMA_MAX), to_u(sigma_min)
    delta = (b - a) / steps
    head = [a - j * delta * delta / 4 for j in range(max(startup - 1, 1))]
    levels = head + [a + j * delta for j in range(1, steps + 1)]
    return torch.tensor([from_u(u) for u in levels], dtype=F64)


def _measured_order(
    name: str,
    options: dict,
    coordinate: str,
    steps: tuple[int, ...],
    sigma_min: float,
    startup: int,
) -> tuple[float, list[float]]:
    """-slope of log RMSE(endpoint vs exact flow) against log steps (checks.convergence_order's
    fit).
    """
    x, exact = _problem(sigma_min)
    sampler = sampling.get(name)
    errors = [
        _rmse(sampler(SMOOTH, x, _grid(k, coordinate, sigma_min, startup), **options), exact)
        for k in steps
    ]
    slope = np.polyfit(np.log(steps), np.log(errors), 1)[0]
    return -float(slope), errors


# (name, options, theoretical order, grid coordinate, sigma_min, steps)
ORDER_CASES = [
    *[
        ("unipc", {"order": p, "variant": v, "corrector": c}, p + c, "log", 0.05, (16, 32, 64))
        for p in (1, 2, 3)
        for v in ("bh1", "bh2")
        for c in (True, False)
    ],
    *[("deis", {"order": k}, k, "log", 0.05, (16, 32, 64)) for k in (1, 2, 3)],
    # Adams-Bashforth in sigma on a grid uniform in log sigma is asymptotic from ~32 steps
    *[("lms", {"order": k}, k, "log", 0.05, (32, 64, 128)) for k in (1, 2, 3, 4)],
    # ipndm on equal steps in sigma, where its fixed weights are Adams-Bashforth's; orders 3 and 4
    # need a refined start-up, which breaks equal steps: see test_ipndm_is_lms_on_equal_steps
    *[("ipndm", {"order": k}, k, "sigma", 1.0, (16, 32, 64)) for k in (1, 2)],
]


@pytest.mark.parametrize(
    ("name", "options", "expected", "coordinate", "sigma_min", "steps"),
    ORDER_CASES,
    ids=[f"{c[0]}-{'-'.join(f'{k}={v}' for k, v in c[1].items())}" for c in ORDER_CASES],
)
def test_order(name, options, expected, coordinate, sigma_min, steps):
    order, errors = _measured_order(
        name, options, coordinate, steps, sigma_min, startup=options["order"]
    )
    assert abs(order - expected) <= 0.3, (order, errors)


def test_start_up_limits_the_order_on_plain_grids():
    # the investigation behind _grid: on a plain exponential grid the first-order first step of
    # 3rd-order DEIS adds O(h^2), which is what remains at many steps; refining it restores order 3
    plain, errors = _measured_order("deis", {}, "log", (64, 128, 256), 0.05, startup=1)
    assert abs(plain - 2) <= 0.3, (plain, errors)
    refined, errors_refined = _measured_order("deis", {}, "log", (64, 128, 256), 0.05, startup=3)
    assert abs(refined - 3) <= 0.3, (refined, errors_refined)
    assert errors_refined[-1] < errors[-1] / 5


def test_ipndm_is_lms_on_equal_steps():
    # the fixed weights are the exact Adams-Bashforth weights of equal steps: on a grid uniform in
    # sigma ipndm is lms, whose order is measured above; the start-up of either (first-order first
    # step, O(delta^2)) cannot be refined without breaking equal steps, and on equal steps over
    # sigma 10 -> 3 the measured order of ipndm 4 falls from 3.0 (8-32 steps) to 2.6 (32-128)
    x, _ = _problem(1.0)
    sigmas = torch.linspace(SIGMA_MAX, 1.0, 13, dtype=F64)
    for order in (1, 2, 3, 4):
        ipndm = sampling.get("ipndm")(SMOOTH, x, sigmas, order=order)
        lms = sampling.get("lms")(SMOOTH, x, sigmas, order=order)
        torch.testing.assert_close(ipndm, lms, rtol=1e-12, atol=1e-12)


def test_ipndm_is_second_order_on_steps_that_vary():
    # its fixed weights integrate a linear eps exactly only for equal steps in sigma
    order, errors = _measured_order("ipndm", {}, "log", (32, 64, 128), 0.05, startup=4)
    assert abs(order - 2) <= 0.3, (order, errors)


# --------------------------------------------------------------------------------------------
# NFE, batch invariance, callback, grids, dtypes, few steps

OPTION_SETS = [
    ("unipc", {}),
    ("unipc", {"corrector": False, "lower_order_final": False}),
    ("unipc", {"order": 1, "variant": "bh1"}),
    ("deis", {}),
    ("deis", {"lower_order_final": False}),
    ("ipndm", {}),
    ("lms", {}),
    ("lms", {"order": 2, "final": "denoised"}),
]


@pytest.mark.parametrize(("name", "options"), OPTION_SETS)
def test_nfe_is_exact(name, options):
    info = sampling.info(name)
    mix = random_mixture(2, 2, seed=0)
    for steps in (*range(1, 8), 20):
        assert nfe_count(info.fn, steps, **options) == info.nfe(steps)
        assert nfe_count(info.fn, steps, zero=False, **options) == info.nfe(steps)
        sigmas = schedules.uniform_t(steps, process=ZERO_SNR)
        assert math.isinf(sigmas[0])
        counter = CountingDenoiser(mix)
        out = info.fn(counter, torch.randn(4, 2, dtype=F64), sigmas, **options)
        assert counter.calls == info.nfe(steps, infinite_start=True)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize(("name", "options"), OPTION_SETS)
def test_batch_invariance(name, options):
    assert batch_invariance(sampling.get(name), stochastic=False, **options) == 0


@pytest.mark.parametrize("name", NAMES)
def test_callback_sees_each_step_and_nothing_is_overwritten(name):
    mix = random_mixture(2, 2, seed=0)
    sigmas = schedules.exponential(6, 0.05, 10.0)
    x = torch.randn(3, 2, dtype=F64) * 10
    x_before = x.clone()
    seen = []
    sampling.get(name)(
        mix, x, sigmas, callback=lambda i, s, xi, d: seen.append((i, s, xi, xi.clone(), d))
    )
    assert torch.equal(x, x_before)
    assert [i for i, *_ in seen] == list(range(6))
    assert [s for _, s, *_ in seen] == sigmas[:-1].tolist()
    for _, s, xi, xi_then, d in seen:  # the x handed out was not modified in place afterwards
        assert torch.equal(xi, xi_then)
        assert torch.allclose(d, mix(xi_then, s))


def _grid_kwargs(name: str, steps: int) -> dict:
    if name == "explicit":
        return {"sigmas": schedules.karras(steps, 0.1, 10.0)[:-1].tolist()}
    return {}


@pytest.mark.parametrize("grid", schedules.available())
def test_every_grid_and_dtype(grid):
    mix = random_mixture(2, 2, seed=0)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(4, 2, generator=g, dtype=F64)
    configs = [{"process": PROCESS}]
    if grid not in {"simple", "ddim_uniform", "ays", "explicit"}:  # the table grids take no ends
        ends = (
            {"sigma_max": 10.0}
            if grid == "linear_quadratic"
            else {"sigma_min": 0.1, "sigma_max": 10.0}
        )
        configs.append({"process": PROCESS, **ends})
    for config in configs:
        sigmas = schedules.get(grid)(8, **config, **_grid_kwargs(grid, 8))
        for dtype in (F64, torch.float32, torch.bfloat16):

            def denoiser(x, sigma, dtype=dtype):  # the exact model answered in x's dtype
                assert x.dtype == dtype and sigma.dtype == dtype
                return mix(x.double(), sigma.double()).to(dtype)

            x = (noise * float(sigmas[0])).to(dtype)
            for name in NAMES:
                out = sampling.get(name)(denoiser, x, sigmas)
                assert out.dtype == dtype, (name, dtype)
                assert torch.isfinite(out.float()).all(), (name, grid, config, dtype)


@functools.cache
def _few_step_problem() -> tuple:
    mix = random_mixture(3, 3, seed=1)
    g = torch.Generator().manual_seed(0)
    x = mix.sample(128, generator=g) + 14.6 * torch.randn(128, 3, generator=g, dtype=F64)
    return mix, x, mix.ode(x, 14.6, 0.0).x


@pytest.mark.parametrize("name", NAMES)
def test_fewer_steps_than_the_order(name):
    # n = 1 is the final step alone (= Euler); n = 2 is one first-order step and the final step,
    # plus the UniC correction of the first step; nothing is worse than Euler
    mix, x, exact = _few_step_problem()
    for steps in (1, 2, 3):
        for final in ("tau", "denoised"):
            sigmas = schedules.karras(steps, 0.03, 14.6)
            out = sampling.get(name)(mix, x, sigmas, final=final)
            euler = sampling.get("euler")(mix, x, sigmas, final=final)
            assert torch.isfinite(out).all()
            if steps == 1 or (steps == 2 and name != "unipc"):
                torch.testing.assert_close(out, euler, rtol=1e-12, atol=1e-12)
            assert _rmse(out, exact) <= _rmse(euler, exact) * 1.001, (steps, final)


def test_bad_options_are_named():
    x, sigmas = torch.zeros(2, 2), [1.0, 0.5, 0.0]
    for name, options, message in [
        ("unipc", {"order": 4}, "order must be an integer in 1..3"),
        ("deis", {"order": 0}, "order must be an integer in 1..3"),
        ("lms", {"order": 5}, "order must be an integer in 1..4"),
        ("ipndm", {"order": 2.0}, "order must be an integer in 1..4"),
        ("unipc", {"variant": "bh3"}, "variant must be 'bh1' or 'bh2'"),
        ("deis", {"final": "magic"}, "unknown final step 'magic'"),
    ]:
        with pytest.raises(ValueError, match=message):
            sampling.get(name)(lambda x, s: x, x, sigmas, **options)


# --------------------------------------------------------------------------------------------
# exact coefficients


def test_phi_functions():
    for z in (-30.0, -3.0, -1.0, -0.999, -0.3, -1e-4, 0.0, 1e-4, 0.5, 0.999, 1.0, 2.0):
        exact = []
        for k in (1, 2, 3, 4):

            def integrand(t, k=k, z=z):
                return math.exp((1 - t) * z) * t ** (k - 1) / math.factorial(k - 1)

            exact.append(integrate.quad(integrand, 0, 1, epsabs=1e-300, epsrel=1e-14)[0])
        for n in (1, 2, 3, 4):
            np.testing.assert_allclose(phis(n, z), exact[:n], rtol=1e-13, err_msg=z)


def _lagrange_integral(nodes, j, lo, hi, time=lambda s: s):
    """int_lo^hi l_j(time(sigma)) dsigma by adaptive quadrature (what k-diffusion does)."""

    def basis(s):
        t = time(s)
        return math.prod(
            (t - nodes[k]) / (nodes[j] - nodes[k]) for k in range(len(nodes)) if k != j
        )

    return integrate.quad(basis, lo, hi, epsabs=1e-300, epsrel=1e-13)[0]


def test_adams_weights_are_exact_integrals():
    sigmas = [12.0, 7.0, 4.5, 2.2, 1.9, 0.3]
    for i in range(1, 5):
        for k in range(1, min(i + 1, 4) + 1):
            lo, hi = sigmas[i], sigmas[i + 1]
            lms = multistep._lms_weights(sigmas, i, k)
            nodes = [sigmas[i - j] for j in range(k)]
            expected = [_lagrange_integral(nodes, j, lo, hi) for j in range(k)]
            np.testing.assert_allclose(lms, expected, rtol=1e-11, atol=1e-13)
            if k <= 3:
                deis = multistep._deis_weights(sigmas, i, k)
                logs = [math.log(s) for s in nodes]
                expected = [_lagrange_integral(logs, j, lo, hi, math.log) for j in range(k)]
                np.testing.assert_allclose(deis, expected, rtol=1e-11, atol=1e-13)


def test_quadrature_solves_the_vandermonde_system():
    nodes, moments = [-0.7, -1.9, 1.0], [0.4, 0.15, 0.05]
    weights = multistep._quadrature(nodes, moments)
    vandermonde = np.vander(nodes, increasing=True).T
    np.testing.assert_allclose(weights, np.linalg.solve(vandermonde, moments), rtol=1e-13)


# --------------------------------------------------------------------------------------------
# agreement with other libraries on the exact model (float64)


def _start(n: int = 8, sigma: float = 10.0) -> tuple:
    mix = random_mixture(3, 3, seed=1)
    g = torch.Generator().manual_seed(0)
    return mix, mix.sample(n, generator=g) + sigma * torch.randn(n, 3, generator=g, dtype=F64)


def test_lms_matches_k_diffusion(k_diffusion):
    kd = k_diffusion
    mix, x = _start()
    above = schedules.karras(12, 0.05, 10.0)[:-1]  # ends at 0.05
    to_zero = schedules.karras(12, 0.05, 10.0)
    for order in (1, 2, 3, 4):
        ours = sampling.get("lms")(mix, x, above, order=order)
        theirs = kd.sample_lms(mix, x.clone(), above, order=order, disable=True)
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
        # into 0: k-diffusion >= 0.1.1.post2 (and ComfyUI) return D at the last level; 0.1.1 takes
        # the Adams step to sigma = 0. Compare with the former: 0.1.1 to sigma_min, then D.
        ours = sampling.get("lms")(mix, x, to_zero, order=order, final="denoised")
        head = kd.sample_lms(mix, x.clone(), to_zero[:-1], order=order, disable=True)
        theirs = mix(head, to_zero[-2])
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def _comfyui_ipndm(model, x, sigmas, max_order=4):
    """ComfyUI's comfy/k_diffusion/sampling.py sample_ipndm, transcribed (loop and weights)."""
    x_next, buffer_model = x, []
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        x_cur = x_next
        denoised = model(x_cur, t_cur * x.new_ones([x.shape[0]]))
        d_cur = (x_cur - denoised) / t_cur
        order = min(max_order, i + 1)
        if t_next == 0:
            x_next = denoised
        elif order == 1:
            x_next = x_cur + (t_next - t_cur) * d_cur
        elif order == 2:
            x_next = x_cur + (t_next - t_cur) * (3 * d_cur - buffer_model[-1]) / 2
        elif order == 3:
            x_next = (
                x_cur
                + (t_next - t_cur)
                * (23 * d_cur - 16 * buffer_model[-1] + 5 * buffer_model[-2])
                / 12
            )
        else:
            x_next = (
                x_cur
                + (t_next - t_cur)
                * (
                    55 * d_cur
                    - 59 * buffer_model[-1]
                    + 37 * buffer_model[-2]
                    - 9 * buffer_model[-3]
                )
                / 24
            )
        if len(buffer_model) == max_order - 1:
            buffer_model = [*buffer_model[1:], d_cur]
        else:
            buffer_model.append(d_cur)
    return x_next


def test_ipndm_matches_comfyui():
    mix, x = _start()
    for sigmas in (schedules.karras(10, 0.05, 10.0), schedules.exponential(9, 0.05, 10.0)):
        for order in (1, 2, 3, 4):
            ours = sampling.get("ipndm")(mix, x, sigmas, order=order, final="denoised")
            theirs = _comfyui_ipndm(mix, x, sigmas, max_order=order)
            torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def _diffusers_run(scheduler, mix, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drive a diffusers multistep scheduler with the exact eps network of ``mix``: x_t = alpha x,
    eps = mixture.eps(x_t / alpha, sigma), alpha = 1 / sqrt(1 + sigma^2) on the scheduler's sigmas
    (made float64). Returns difflab's grid and the endpoint in x = x0 + sigma eps coordinates.
    """
    sigmas = scheduler.sigmas.double()
    scheduler.sigmas = sigmas
    sample = x / math.sqrt(1 + float(sigmas[0]) ** 2)
    for i, t in enumerate(scheduler.timesteps):
        s = float(sigmas[i])
        eps = mix.eps(sample * math.sqrt(1 + s * s), torch.full((len(x),), s, dtype=F64))
        sample = scheduler.step(eps, t, sample).prev_sample
    return sigmas, sample * math.sqrt(1 + float(sigmas[-1]) ** 2)


# final_sigmas_type="zero" needs lower_order_final=True in diffusers (else its order >= 2 step into
# sigma = 0 divides by zero); "sigma_min" ends above 0, where difflab keeps the full order to the
# end, as diffusers with lower_order_final=False. bh1 only above 0: into 0 diffusers' bh1 returns
# NaN (B(h) = -inf times a zero correction). Karras spacing only into 0: with "sigma_min" diffusers
# repeats the last Karras level (a zero step, NaN).
UNIPC_CASES = [
    (final_sigmas, lower, order, variant, corrector)
    for final_sigmas, lower, variants in (
        ("zero", True, ("bh2",)),
        ("sigma_min", False, ("bh1", "bh2")),
    )
    for order in (1, 2, 3)
    for variant in variants
    for corrector in (True, False)
]


@pytest.mark.parametrize(("final_sigmas", "lower", "order", "variant", "corrector"), UNIPC_CASES)
def test_unipc_matches_diffusers(final_sigmas, lower, order, variant, corrector):
    diffusers = pytest.importorskip("diffusers")
    diffusers.utils.logging.set_verbosity_error()
    mix, _ = _start()
    for steps, karras in ((1, False), (2, False), (3, True), (7, False), (12, True)):
        scheduler = diffusers.UniPCMultistepScheduler(
            **DIFFUSERS_BETAS,
            solver_order=order,
            solver_type=variant,
            lower_order_final=lower,
            final_sigmas_type=final_sigmas,
            use_karras_sigmas=karras and final_sigmas == "zero",
            disable_corrector=[] if corrector else list(range(steps)),
        )
        scheduler.set_timesteps(steps)
        x = torch.randn(8, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
        sigmas, theirs = _diffusers_run(scheduler, mix, x * float(scheduler.sigmas[0]))
        ours = sampling.get("unipc")(
            mix,
            x * float(sigmas[0]),
            sigmas,
            order=order,
            variant=variant,
            corrector=corrector,
            lower_order_final=lower,
            final="denoised",
        )
        torch.testing.assert_close(ours, theirs, rtol=1e-11, atol=1e-11)


def test_deis_matches_diffusers():
    # diffusers' DEIS ("logrho") ends at the table's sigma_min, where difflab keeps the full order
    # (diffusers' lower_order_final off)
    diffusers = pytest.importorskip("diffusers")
    diffusers.utils.logging.set_verbosity_error()
    mix, _ = _start()
    for order in (1, 2, 3):
        for steps in (1, 2, 5, 12):
            scheduler = diffusers.DEISMultistepScheduler(
                **DIFFUSERS_BETAS, solver_order=order, lower_order_final=False
            )
            scheduler.set_timesteps(steps)
            x = torch.randn(8, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
            x = x * float(scheduler.sigmas[0])
            sigmas, theirs = _diffusers_run(scheduler, mix, x)
            assert sigmas[-1] > 0
            ours = sampling.get("deis")(mix, x, sigmas, order=order)
            torch.testing.assert_close(ours, theirs, rtol=1e-11, atol=1e-11)
