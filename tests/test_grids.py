"""Step grids: the shared contract for every registered name, hand-computed values, and agreement with
the formulas of k-diffusion, ComfyUI, diffusers and scipy (re-derived here independently)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from difflab import schedules
from difflab.core.grids import betainc, betaincinv
from difflab.core.processes import Flow, VPDiscrete

SD = dict(schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
PROCESS = VPDiscrete(**SD)
ZERO_SNR = VPDiscrete(**SD, rescale_zero_terminal_snr=True)
STEPS = [1, 2, 5, 10, 50]

# grids that take their levels from a table / published list and accept no sigma_min, sigma_max
TABLE_GRIDS = {"simple", "ddim_uniform", "ays", "explicit"}
# grids whose first level is sigma_max ...
HITS_MAX = set(schedules.available()) - {"ddim_uniform", "ays", "explicit"}
# ... and whose last nonzero level is sigma_min. The others stop above it by construction:
# beta (1/n quantile), sgm_uniform (drops the last of n + 1 times), linear_quadratic (ignores
# sigma_min), simple / ddim_uniform / ays (their own tables). laplace hits both ends only because
# the ranges used here lie inside its clamp (exp(+-0.5 ln 1e5) = 316 / 0.0032).
HITS_MIN = {
    "karras", "exponential", "logsnr", "polyexponential", "uniform_t", "normal", "vp", "flow",
    "sd3", "kl_optimal", "laplace",
}  # fmt: skip


def assert_close(actual: object, expected: object, rtol: float = 1e-12, atol: float = 0.0) -> None:
    # numpy's check: torch.testing's first call costs ~1 s of lazy imports
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=rtol, atol=atol)


def _options(name: str, steps: int) -> dict:
    if name == "explicit":
        return {"sigmas": schedules.karras(steps, 0.1, 10.0)[:-1].tolist()}
    return {}


def _check_grid(g: torch.Tensor, steps: int) -> None:
    assert g.dtype == torch.float64 and g.ndim == 1
    assert len(g) == steps + 1
    assert g[-1] == 0
    assert not g.isnan().any()
    assert bool((g[1:] < g[:-1]).all()), g


@pytest.mark.parametrize("name", schedules.available())
@pytest.mark.parametrize("config", ["process", "endpoints"])
def test_contract(name: str, config: str) -> None:
    grid = schedules.get(name)
    if config == "endpoints" and name in TABLE_GRIDS:
        pytest.skip("table grids take no endpoints")
    for steps in STEPS:
        kwargs = {"process": PROCESS, **_options(name, steps)}
        lo, hi = PROCESS.sigma_min, PROCESS.sigma_max
        if config == "endpoints":
            lo, hi = 0.1, 10.0
            kwargs["sigma_max"] = hi
            if name != "linear_quadratic":  # it does not use sigma_min
                kwargs["sigma_min"] = lo
        g = grid(steps, **kwargs)
        _check_grid(g, steps)
        assert_close(grid(steps, append_zero=False, **kwargs), g[:-1], rtol=0, atol=0)
        if name in HITS_MAX:
            assert float(g[0]) == pytest.approx(hi, rel=1e-13)
        if name in HITS_MIN and steps >= 2:
            assert float(g[-2]) == pytest.approx(lo, rel=1e-13)


def test_pinned_endpoints_are_exact() -> None:
    for name in [
        "karras",
        "exponential",
        "polyexponential",
        "uniform_t",
        "vp",
        "flow",
        "kl_optimal",
    ]:
        g = schedules.get(name)(7, 0.1, 10.0, process=PROCESS)
        assert float(g[0]) == 10.0 and float(g[-2]) == 0.1, name


# --------------------------------------------------------------------------------------------
# hand-computed values and the k-diffusion formulas


def test_karras_by_hand() -> None:
    # steps counts intervals: 2 steps are sigma_max, sigma_min, 0 (k-diffusion's n = 2)
    assert schedules.karras(2, 0.1, 10.0, rho=1).tolist() == [10.0, 0.1, 0.0]
    # rho = 1 is linear in sigma: 10, (10 + 0.1) / 2, 0.1
    expected = torch.tensor([10.0, 5.05, 0.1, 0.0], dtype=torch.float64)
    assert_close(schedules.karras(3, 0.1, 10.0, rho=1), expected)
    # rho = 2: midpoint of the square roots, squared
    mid = ((10**0.5 + 0.1**0.5) / 2) ** 2
    assert_close(
        schedules.karras(3, 0.1, 10.0, rho=2),
        torch.tensor([10.0, mid, 0.1, 0.0], dtype=torch.float64),
    )
    # default rho = 7, eq. 5 of Karras et al. 2022 at i = 1 of n = 4
    a, b = 10 ** (1 / 7), 0.1 ** (1 / 7)
    assert float(schedules.karras(4, 0.1, 10.0)[1]) == pytest.approx(
        (a + (b - a) / 3) ** 7, rel=1e-14
    )


def test_exponential_and_logsnr_by_hand() -> None:
    expected = torch.tensor([10.0, 1.0, 0.1, 0.0], dtype=torch.float64)
    assert_close(schedules.exponential(3, 0.1, 10.0), expected)
    assert_close(schedules.get("logsnr")(3, 0.1, 10.0), expected)
    # log-SNR = -2 log sigma is uniform
    g = schedules.exponential(9, 0.03, 14.6)[:-1]
    assert_close(
        torch.diff(-2 * g.log()),
        torch.full((8,), float(-2 * math.log(0.03 / 14.6) / 8), dtype=torch.float64),
    )


def test_polyexponential_by_hand() -> None:
    assert_close(schedules.polyexponential(6, 0.1, 10.0), schedules.exponential(6, 0.1, 10.0))
    # rho = 2, middle point: log sigma = log 0.1 + (1/2)^2 log 100
    assert float(schedules.polyexponential(3, 0.1, 10.0, rho=2)[1]) == pytest.approx(
        0.1 * 100**0.25
    )


def test_vp_matches_k_diffusion() -> None:
    t = torch.linspace(1, 1e-3, 10, dtype=torch.float64)
    expected = torch.sqrt(torch.expm1(19.9 * t**2 / 2 + 0.1 * t))
    assert_close(schedules.vp(10)[:-1], expected, rtol=1e-12, atol=0)


def test_kl_optimal_is_uniform_in_atan() -> None:
    expected = torch.linspace(math.atan(14.6), math.atan(0.03), 8, dtype=torch.float64).tan()
    assert_close(schedules.kl_optimal(8, 0.03, 14.6)[:-1], expected, rtol=1e-13, atol=0)


def test_flow_shift() -> None:
    shifted = schedules.flow(8, 0.01, 50.0, shift=3.0)
    assert_close(shifted, 3 * schedules.flow(8, 0.01 / 3, 50.0 / 3, shift=1.0))
    assert float(shifted[0]) == 50.0 and float(shifted[-2]) == 0.01
    tau = schedules.flow(8, 0.01, 50.0)[:-1]
    tau = tau / (1 + tau)  # uniform in flow time without shift
    assert_close(torch.diff(tau), torch.diff(tau).mean().expand(7))
    # the shift defaults to the Flow process's own; the flow process starts at sigma = inf
    p = Flow(shift=3.0)
    g = schedules.get("sd3")(6, process=p)
    assert math.isinf(g[0]) and float(g[-2]) == pytest.approx(p.sigma_min)
    assert_close(g[1:], schedules.flow(6, process=p, shift=3.0)[1:])
    assert not torch.equal(g[1:-1], schedules.flow(6, process=p, shift=1.0)[1:-1])


def test_normal_and_sgm_uniform_on_integer_timesteps() -> None:
    table = PROCESS.sigmas
    # linspace(999, 0, 4) and linspace(999, 0, 4)[:-1] are integer timesteps: exact table rows
    assert_close(schedules.get("normal")(4, process=PROCESS)[:-1], table[[999, 666, 333, 0]])
    assert_close(schedules.sgm_uniform(3, process=PROCESS)[:-1], table[[999, 666, 333]])


# --------------------------------------------------------------------------------------------
# ComfyUI schedulers, re-implemented here from their published code


def test_simple_matches_comfyui() -> None:
    table = PROCESS.sigmas.tolist()
    for steps in [1, 3, 7, 20, 333, 1000]:
        ss = len(table) / steps
        expected = [table[-(1 + int(x * ss))] for x in range(steps)] + [0.0]
        assert schedules.simple(steps, process=PROCESS).tolist() == expected


def test_ddim_uniform_matches_comfyui() -> None:
    table = PROCESS.sigmas.tolist()
    for steps in [1, 3, 4, 7, 10, 50, 999]:
        c, x, levels = max(len(table) // steps, 1), 1, []
        while x < len(table):
            levels.append(table[x])
            x += c
        # ComfyUI keeps every 1 + c k < N; difflab keeps exactly the first `steps` of them
        expected = [*levels[:steps][::-1], 0.0]
        assert schedules.ddim_uniform(steps, process=PROCESS).tolist() == expected
        if len(levels) == steps:
            assert expected == [*levels[::-1], 0.0]


def test_laplace_matches_comfyui() -> None:
    lo, hi = 0.0292, 14.6
    for steps in [1, 2, 9, 40]:
        x = torch.linspace(0, 1, steps, dtype=torch.float64)
        lam = 0 - 0.5 * torch.sign(0.5 - x) * torch.log(1 - 2 * torch.abs(0.5 - x) + 1e-5)
        assert_close(schedules.laplace(steps, lo, hi)[:-1], lam.exp().clamp(lo, hi))


def _comfy_linear_quadratic(steps: int, threshold_noise: float = 0.025) -> list[float]:
    if steps == 1:
        return [1.0, 0.0]
    linear_steps = steps // 2
    sched = [i * threshold_noise / linear_steps for i in range(linear_steps)]
    diff = linear_steps - threshold_noise * steps
    quadratic_steps = steps - linear_steps
    q = diff / (linear_steps * quadratic_steps**2)
    lin = threshold_noise / linear_steps - 2 * diff / quadratic_steps**2
    const = q * linear_steps**2
    sched += [q * i**2 + lin * i + const for i in range(linear_steps, steps)]
    return [1.0 - x for x in [*sched, 1.0]]


def test_linear_quadratic_matches_comfyui() -> None:
    for steps in [1, 2, 5, 10, 50]:
        # with sigma_max = inf the flow-time scale is 1: the grid's flow times are ComfyUI's values
        g = schedules.linear_quadratic(steps, sigma_max=math.inf)
        tau = torch.where(g.isinf(), 1.0, g / (1 + g))
        assert_close(tau, torch.tensor(_comfy_linear_quadratic(steps), dtype=torch.float64))
        # a finite sigma_max scales flow time so that the grid starts there
        g = schedules.linear_quadratic(steps, sigma_max=14.6)
        scale = 14.6 / 15.6
        expected = torch.tensor(_comfy_linear_quadratic(steps), dtype=torch.float64) * scale
        assert_close(g / (1 + g), expected)


AYS_SD15 = [14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092,
            0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582]  # fmt: skip


def test_ays_published_and_resampled() -> None:
    assert schedules.ays(10).tolist() == [*AYS_SD15[:10], 0.0]
    assert float(schedules.ays(10, model="sdxl")[1]) == 6.3184485287
    for steps in [1, 4, 20, 32]:  # AYS reference loglinear_interp, last point replaced by 0
        xs = np.linspace(0, 1, len(AYS_SD15))
        ys = np.interp(np.linspace(0, 1, steps + 1), xs, np.log(AYS_SD15[::-1]))
        expected = np.exp(ys)[::-1].copy()
        expected[-1] = 0
        np.testing.assert_allclose(schedules.ays(steps).numpy(), expected, rtol=1e-15)


# --------------------------------------------------------------------------------------------
# diffusers' timestep spacing


def _diffusers_timesteps(spacing: str, n_train: int, n: int, offset: int = 0) -> np.ndarray:
    if spacing == "linspace":
        return np.linspace(0, n_train - 1, n).round()[::-1].astype(np.int64)
    if spacing == "leading":
        return (np.arange(0, n) * (n_train // n)).round()[::-1].astype(np.int64) + offset
    # np.arange(N, 0, -N/n) yields n + 1 values for some n (e.g. 61); diffusers then ends in -1
    return (np.round(np.arange(n_train, 0, -n_train / n)) - 1).astype(np.int64)[:n]


def _timesteps_of(grid: torch.Tensor, table: torch.Tensor) -> np.ndarray:
    t = np.searchsorted(table.numpy(), grid[:-1].numpy())
    assert np.array_equal(table.numpy()[t], grid[:-1].numpy()), "levels must be exact table entries"
    return t


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_uniform_t_spacing_matches_numpy(spacing: str) -> None:
    offset = 1 if spacing == "leading" else 0
    # every n where floating point matters (linspace, trailing); leading is integer arithmetic
    for n in range(1, 1001, 1 if spacing != "leading" else 7):
        expected = _diffusers_timesteps(spacing, 1000, n, offset)
        if expected.max() > 999:  # leading + steps_offset past the table: diffusers would index out
            with pytest.raises(ValueError, match="outside the table"):
                schedules.uniform_t(n, process=PROCESS, spacing=spacing, steps_offset=offset)
            continue
        g = schedules.uniform_t(n, process=PROCESS, spacing=spacing, steps_offset=offset)
        _check_grid(g, n)
        np.testing.assert_array_equal(_timesteps_of(g, PROCESS.sigmas), expected, err_msg=str(n))
    with pytest.raises(ValueError, match="at most 1000 distinct levels"):
        schedules.uniform_t(1001, process=PROCESS, spacing=spacing)


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_uniform_t_spacing_matches_diffusers(spacing: str) -> None:
    diffusers = pytest.importorskip("diffusers")
    offset = 1 if spacing == "leading" else 0
    scheduler = diffusers.DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        timestep_spacing=spacing,
        steps_offset=offset,
    )
    for n in [1, 2, 5, 10, 20, 50, 61, 100, 250, 999]:
        scheduler.set_timesteps(n)
        ours = _timesteps_of(
            schedules.uniform_t(n, process=PROCESS, spacing=spacing, steps_offset=offset),
            PROCESS.sigmas,
        )
        np.testing.assert_array_equal(ours, scheduler.timesteps.numpy()[:n], err_msg=str(n))


# --------------------------------------------------------------------------------------------
# beta grid and the incomplete beta function


def test_incomplete_beta_matches_scipy() -> None:
    # scipy.special.betaincinv is what scipy.stats.beta.ppf evaluates (boost's ibeta_inv)
    special = pytest.importorskip("scipy.special")
    q = torch.cat([torch.linspace(0, 1, 101, dtype=torch.float64), torch.tensor([1e-9, 1 - 1e-9])])
    for a, b in [(0.6, 0.6), (0.5, 2.0), (2.0, 3.0), (1.0, 1.0), (0.3, 0.3), (5.0, 0.8)]:
        expected = special.betaincinv(a, b, q.numpy())
        np.testing.assert_allclose(betaincinv(a, b, q).numpy(), expected, rtol=0, atol=1e-10)
        np.testing.assert_allclose(
            betainc(a, b, q).numpy(), special.betainc(a, b, q.numpy()), rtol=0, atol=1e-13
        )


def test_beta_grid_quantiles() -> None:
    special = pytest.importorskip("scipy.special")
    for steps in [2, 5, 17]:
        q = 1 - np.arange(steps) / steps
        t = torch.from_numpy(
            special.betaincinv(0.6, 0.6, q) * 999
        )  # ComfyUI, before rounding to integers
        assert_close(
            schedules.beta(steps, process=PROCESS)[:-1], PROCESS.sigma_ve(t), rtol=1e-9, atol=0
        )
        # without a process: the same quantiles of log sigma between the endpoints
        log_sigma = math.log(0.1) + special.betaincinv(0.6, 0.6, q) * math.log(100)
        assert_close(
            schedules.beta(steps, 0.1, 10.0)[:-1],
            torch.from_numpy(np.exp(log_sigma)),
            rtol=1e-9,
            atol=0,
        )


# --------------------------------------------------------------------------------------------
# sigma = inf and sigma = 0


@pytest.mark.parametrize(
    "name",
    [
        "uniform_t",
        "normal",
        "sgm_uniform",
        "beta",
        "flow",
        "kl_optimal",
        "linear_quadratic",
        "simple",
    ],
)
def test_zero_terminal_snr_starts_at_inf(name: str) -> None:
    for steps in STEPS:
        g = schedules.get(name)(steps, process=ZERO_SNR)
        _check_grid(g, steps)
        assert math.isinf(g[0]) and bool(g[1:].isfinite().all())
    g = schedules.uniform_t(10, process=ZERO_SNR, spacing="trailing")
    _check_grid(g, 10)
    assert math.isinf(g[0])


@pytest.mark.parametrize("name", ["karras", "exponential", "polyexponential", "vp"])
def test_sigma_grids_need_finite_sigma_max(name: str) -> None:
    with pytest.raises(ValueError, match="needs a finite sigma_max"):
        schedules.get(name)(10, process=ZERO_SNR)
    with pytest.raises(ValueError, match="finite sigma_max"):
        schedules.get(name)(10, 0.1, math.inf)


def test_sigma_min_zero_ends_once_in_zero() -> None:
    for name in ["karras", "uniform_t", "flow", "kl_optimal", "sgm_uniform", "laplace"]:
        for steps in [1, 5]:
            g = schedules.get(name)(steps, 0.0, 10.0, process=PROCESS)
            _check_grid(g, steps)
        g = schedules.get(name)(5, 0.0, 10.0, process=PROCESS, append_zero=False)
        assert len(g) == 5 and bool((g[:-1] > 0).all())
    with pytest.raises(ValueError, match="sigma_min > 0"):
        schedules.exponential(5, 0.0, 10.0)


# --------------------------------------------------------------------------------------------
# explicit grids and errors


def test_explicit() -> None:
    g = schedules.explicit(3, sigmas=[10.0, 2.0, 0.5])
    assert g.tolist() == [10.0, 2.0, 0.5, 0.0]
    assert schedules.explicit(3, sigmas=[10.0, 2.0, 0.5, 0.0]).tolist() == g.tolist()
    assert schedules.explicit(3, sigmas=[10.0, 2.0, 0.5], append_zero=False).tolist() == [
        10.0,
        2.0,
        0.5,
    ]
    assert math.isinf(schedules.explicit(2, sigmas=[math.inf, 1.0])[0])
    with pytest.raises(ValueError, match="not strictly decreasing at index 2"):
        schedules.explicit(3, sigmas=[10.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="not strictly decreasing at index 2"):
        schedules.explicit(3, sigmas=[10.0, 2.0, 2.0])
    with pytest.raises(ValueError, match="index 1 is -1"):
        schedules.explicit(3, sigmas=[10.0, -1.0, 0.5])
    with pytest.raises(ValueError, match="make 3 steps, but steps=4"):
        schedules.explicit(4, sigmas=[10.0, 2.0, 0.5])
    with pytest.raises(ValueError, match="needs sigmas"):
        schedules.explicit(4)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"unknown step grid 'karas'.*karras.*Valid names: ays"):
        schedules.get("karas")


@pytest.mark.parametrize("steps", [0, -3, 2.5, True, "10"])
def test_bad_steps(steps: object) -> None:
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        schedules.karras(steps, 0.1, 10.0)  # type: ignore[arg-type]


def test_bad_endpoints() -> None:
    with pytest.raises(ValueError, match="sigma_min must be finite and >= 0"):
        schedules.karras(5, -0.1, 10.0)
    with pytest.raises(ValueError, match=r"sigma_min \(10.0\) must be < sigma_max \(10.0\)"):
        schedules.karras(5, 10.0, 10.0)
    with pytest.raises(ValueError, match=r"sigma_min \(20.0\) must be < sigma_max"):
        schedules.uniform_t(5, 20.0, 10.0, process=PROCESS)
    with pytest.raises(ValueError, match="needs sigma_min and sigma_max, or a process"):
        schedules.karras(5)
    with pytest.raises(ValueError, match="needs sigma_min and sigma_max, or a process"):
        schedules.karras(5, sigma_max=10.0)
    with pytest.raises(ValueError, match="pass process="):
        schedules.uniform_t(5, 0.1, 10.0)
    with pytest.raises(ValueError, match="leave sigma_min and sigma_max as None"):
        schedules.simple(5, 0.1, 10.0, process=PROCESS)
    with pytest.raises(ValueError, match="leave sigma_min and sigma_max as None"):
        schedules.ays(5, sigma_max=14.6)
    with pytest.raises(ValueError, match="does not use sigma_min"):
        schedules.linear_quadratic(5, 0.1, 10.0)
    with pytest.raises(ValueError, match="sigma table"):
        schedules.simple(5, process=Flow())


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="unknown timestep spacing 'trail'"):
        schedules.uniform_t(5, process=PROCESS, spacing="trail")
    with pytest.raises(ValueError, match="unknown Align Your Steps model 'sd3'"):
        schedules.ays(5, model="sd3")
    with pytest.raises(ValueError, match="outside the table"):
        schedules.uniform_t(1000, process=PROCESS, spacing="leading", steps_offset=1)
    with pytest.raises(ValueError, match="rho must be > 0"):
        schedules.karras(5, 0.1, 10.0, rho=0)
    with pytest.raises(ValueError, match="shift must be > 0"):
        schedules.flow(5, 0.1, 10.0, shift=0)


def test_ties_raise_with_the_number_of_levels() -> None:
    with pytest.raises(ValueError, match="at most 1000 distinct levels"):
        schedules.simple(1001, process=PROCESS)
    with pytest.raises(ValueError, match="at most 999 distinct levels"):
        schedules.ddim_uniform(1000, process=PROCESS)
    # laplace clamps at sigma_max = 10 for x < 0.0025 or so: many steps tie there
    with pytest.raises(ValueError, match=r"only \d+ distinct noise levels"):
        schedules.laplace(2000, 0.1, 10.0)
