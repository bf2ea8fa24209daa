"""The sampler registry's contract and the first samplers (Euler, Heun, DPM-Solver++(2M))."""

import math

import pytest
import torch

from difflab import sampling, schedules
from difflab.acceleration import ode_step
from difflab.core.counting import CountingDenoiser
from difflab.core.processes import VPDiscrete
from difflab.sampling.registry import steps_within
from difflab.sampling.steps import final_step, final_weight, heun_step
from difflab.testing import random_mixture, ring2d, stiff
from difflab.testing.checks import CountingDenoiser as checks_counting
from difflab.testing.checks import (
    batch_invariance,
    check_sampler,
    convergence_order,
    nfe_count,
)

BASIC = {"euler": 1, "heun": 2, "dpmpp_2m": 2}


@pytest.mark.parametrize("name", BASIC)
def test_order(name):
    order, errors = convergence_order(sampling.get(name), steps=(16, 32, 64, 128))
    assert abs(order - BASIC[name]) <= 0.3, (order, errors)


@pytest.mark.parametrize("name", BASIC)
@pytest.mark.parametrize("steps", [1, 2, 3, 4, 7, 20])
def test_nfe_is_exact(name, steps):
    assert nfe_count(sampling.get(name), steps) == sampling.info(name).nfe(steps)


@pytest.mark.parametrize("name", BASIC)
def test_batch_invariance(name):
    assert batch_invariance(sampling.get(name), stochastic=False) == 0


def test_final_tau_step_beats_the_denoised_jump_on_the_exact_flow():
    # from exactly on the flow at sigma_min, one final step into 0: Euler in sigma^2 is O(sigma^4)
    for mix in (ring2d(), stiff(dim=16)):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(128, mix.dim, generator=g, dtype=torch.float64) * 20
        truth = mix.ode(x, 20.0, 0.0).x
        for smin in (0.01, 0.03):
            xs = mix.ode(x, 20.0, smin).x
            d = mix(xs, smin)
            err = {
                f: float((final_step(xs, d, f, smin) - truth).norm(dim=1).mean())
                for f in ("tau", "denoised")
            }
            assert err["tau"] < err["denoised"] / 5, err


def test_final_step_falls_back_to_the_jump_at_large_sigma():
    # one step from sigma_max: Euler in sigma^2 would keep half the noise; the weighted step must not
    assert final_weight(1e-4) == pytest.approx(0.5) and final_weight(1e4) == pytest.approx(
        1, abs=1e-3
    )
    mix = stiff(dim=16)
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 80
    truth = mix.ode(x, 80.0, 0.0).x
    err = {
        f: float((sampling.get("euler")(mix, x, [80.0, 0.0], final=f) - truth).norm(dim=1).mean())
        for f in ("tau", "denoised")
    }
    assert err["tau"] <= err["denoised"], err


def test_final_step_rejects_unknown_policy():
    with pytest.raises(ValueError, match="final step"):
        final_step(torch.zeros(1), torch.zeros(1), "magic")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_dtype_is_kept(dtype):
    mix = random_mixture(2, 2, seed=0)

    def denoiser(x, sigma):  # the exact model evaluated in float64, answered in x's dtype
        assert x.dtype == dtype and sigma.dtype == dtype
        return mix(x.double(), sigma.double()).to(dtype)

    sigmas = schedules.get("karras")(6, 0.01, 20.0)
    x = torch.randn(4, 2, dtype=torch.float64).to(dtype) * 20
    for name in BASIC:
        out = sampling.get(name)(denoiser, x, sigmas)
        assert out.dtype == dtype and torch.isfinite(out.float()).all()


def test_zero_terminal_snr_start():
    process = VPDiscrete(rescale_zero_terminal_snr=True)
    sigmas = schedules.get("uniform_t")(8, process=process, spacing="trailing")
    assert math.isinf(sigmas[0])
    mix = random_mixture(2, 2, seed=0)
    x = torch.randn(16, 2, dtype=torch.float64)  # at sigma = inf, x holds the unit noise
    for name in BASIC:
        counter = CountingDenoiser(mix)
        out = sampling.get(name)(counter, x, sigmas)
        assert torch.isfinite(out).all()
        assert counter.calls == sampling.info(name).nfe(8, infinite_start=True)


def test_callback_sees_each_step():
    mix = random_mixture(2, 2, seed=0)
    seen = []
    sigmas = schedules.get("exponential")(5, 0.05, 10.0)
    sampling.get("heun")(
        mix,
        torch.randn(3, 2, dtype=torch.float64) * 10,
        sigmas,
        callback=lambda i, s, x, d: seen.append((i, s)),
    )
    assert [i for i, _ in seen] == list(range(5))
    assert [s for _, s in seen] == sigmas[:-1].tolist()


def test_cond_reaches_the_denoiser():
    got = {}

    def denoiser(x, sigma, label):
        got["label"] = label
        return torch.zeros_like(x)

    sampling.get("euler")(denoiser, torch.ones(2, 2), [1.0, 0.0], cond={"label": 3})
    assert got["label"] == 3


@pytest.mark.parametrize(
    ("sigmas", "message"),
    [
        ([1.0], "at least 2"),
        ([1.0, 2.0, 0.0], "strictly decreasing"),
        ([1.0, -0.5], ">= 0"),
        ([float("nan"), 0.0], ">= 0"),
        ([2.0, float("inf"), 0.0], "only sigmas\\[0\\] may be inf"),
    ],
)
def test_bad_grids_are_named(sigmas, message):
    with pytest.raises(ValueError, match=message):
        sampling.get("euler")(lambda x, s: x, torch.zeros(2, 2), sigmas)


def test_bad_input_is_named():
    sigmas = [1.0, 0.0]
    with pytest.raises(ValueError, match="NaN or inf"):
        sampling.get("euler")(lambda x, s: x, torch.full((2, 2), float("nan")), sigmas)
    with pytest.raises(ValueError, match="floating point"):
        sampling.get("euler")(lambda x, s: x, torch.zeros(2, 2, dtype=torch.long), sigmas)
    with pytest.raises(ValueError, match="option for sampler 'euler'"):
        sampling.get("euler")(lambda x, s: x, torch.zeros(2, 2), sigmas, eta=1.0)
    with pytest.raises(ValueError, match="Did you mean 'dpmpp_2m'"):
        sampling.get("dpmpp2m")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        sampling.info("euler").nfe(0)


def test_per_sample_generators_make_noise_batch_invariant():
    together = sampling.randn((4, 3), sampling.generators(7, 4))
    alone = sampling.randn((2, 3), sampling.generators(7, 2))
    assert torch.equal(together[:2], alone)
    assert not torch.equal(together[0], together[1])
    with pytest.raises(ValueError, match="3 generators for a batch of 4"):
        sampling.randn((4, 3), sampling.generators(0, 3))


def test_check_sampler_report():
    report = check_sampler(sampling.get("heun"), "heun", steps=(16, 32, 64))
    assert abs(report.order - 2) < 0.3
    assert report.nfe == {16: 32, 32: 64, 64: 128}
    assert "measured order" in str(report)


def test_sampler_runs_under_torch_compile():
    mix = random_mixture(2, 2, seed=0)
    x = torch.randn(8, 2, dtype=torch.float64) * 20
    sigmas = schedules.get("karras")(6, 0.01, 20.0)
    compiled = torch.compile(sampling.get("dpmpp_2m"), backend="aot_eager")
    # compiled graphs may decompose ops (a / b -> a * (1 / b)): equal to float64 rounding
    torch.testing.assert_close(
        compiled(mix, x, sigmas), sampling.get("dpmpp_2m")(mix, x, sigmas), rtol=1e-13, atol=1e-13
    )


def test_final_step_with_history_is_second_order_in_tau():
    # on the exact flow: AB2 in tau from the last two levels beats Euler in tau
    for mix in (ring2d(), stiff(dim=16)):
        x = torch.randn(
            128, mix.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64
        )
        truth = mix.ode(x * 20, 20.0, 0.0).x
        s_prev, s = 0.04, 0.0292
        x_prev, x_last = (mix.ode(x * 20, 20.0, level).x for level in (s_prev, s))
        eps_prev = (x_prev - mix(x_prev, s_prev)) / s_prev
        d = mix(x_last, s)
        plain = (final_step(x_last, d, "tau", s) - truth).norm(dim=1).mean()
        with_history = (
            (final_step(x_last, d, "tau", s, (eps_prev, s_prev)) - truth).norm(dim=1).mean()
        )
        assert with_history < plain / 2, (float(with_history), float(plain))


# --------------------------------------------------------------------------------------------
# the small pieces written once: Heun's step, NFE budget -> steps, the counting denoiser


def test_heun_step_is_the_one_heun_of_the_samplers_and_the_teacher():
    """sampling.steps.heun_step is heun's step, EDM's and Restart's, and the distillation
    teacher's with a level per sample: on one interval s -> s' > 0 all give the same x'."""
    mix = random_mixture(2, 2, seed=0)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    s, nxt = 3.0, 1.2
    by_hand = heun_step(x, mix(x, s), s, nxt, lambda u: mix(u, nxt))
    assert torch.equal(sampling.get("heun")(mix, x, [s, nxt]), by_hand)
    g = torch.Generator()
    assert torch.equal(sampling.get("edm")(mix, x, [s, nxt], s_churn=0.0, generator=g), by_hand)
    levels = torch.full((5,), s, dtype=torch.float64), torch.full((5,), nxt, dtype=torch.float64)
    assert torch.equal(ode_step(mix, x, *levels, solver="heun"), by_hand)
    # a level per sample: row i is the step of its own levels
    s_rows = torch.tensor([3.0, 2.0, 1.0, 0.5, 0.2], dtype=torch.float64)[:, None]
    rows = heun_step(
        x, mix(x, s_rows[:, 0]), s_rows, s_rows / 2, lambda u: mix(u, s_rows[:, 0] / 2)
    )
    for i in range(5):
        a, b = float(s_rows[i]), float(s_rows[i]) / 2
        one = heun_step(x[i : i + 1], mix(x[i : i + 1], a), a, b, lambda u, b=b: mix(u, b))
        torch.testing.assert_close(rows[i : i + 1], one, rtol=1e-14, atol=0)


def test_nfe_budget_to_steps_is_the_registry_rule():
    heun = sampling.info("heun")  # 2 steps - 1
    assert heun.steps_for(10) == 5 and heun.steps_for(9) == 5 and heun.steps_for(1) == 1
    assert heun.steps_for(10, exact=True) is None and heun.steps_for(9, exact=True) == 5
    assert heun.steps_for(0) is None
    assert heun.steps_for(4, infinite_start=True, exact=True) == 3  # 1 + (2 (steps - 1) - 1)
    restart = sampling.info("restart")  # 2 n - 1 + 2 K r from n = 2 on
    assert restart.steps_for(20, restart_k=1) == 8 and restart.nfe(8, restart_k=1) == 19
    for name in ("euler", "heun", "dpm_solver_3", "restart"):
        info = sampling.info(name)
        for budget in range(1, 40):
            steps = info.steps_for(budget)
            assert steps is None or info.nfe(steps) <= budget < info.nfe(steps + 1)
    with pytest.raises(ValueError, match="adaptively"):
        sampling.info("adaptive").steps_for(10)
    with pytest.raises(ValueError, match="must be an integer"):
        heun.steps_for(10.0)
    # any cost rule, another library's too; a step count it cannot run (inf) does not fit
    assert steps_within(lambda n: math.inf if n < 3 else n, 6) == 6
    assert steps_within(lambda n: 3 * n - 1, 7) == 2 and steps_within(lambda n: 3 * n, 2) is None
    assert steps_within(lambda n: 3 * n - 1, 7, exact=True) is None


def test_the_counting_denoiser_counts_calls_and_rows():
    mix = random_mixture(2, 2, seed=0)
    counter = CountingDenoiser(mix)
    assert CountingDenoiser is checks_counting  # one class, two names
    sampling.get("heun")(counter, torch.randn(3, 2, dtype=torch.float64), [10.0, 1.0, 0.0])
    assert counter.calls == sampling.info("heun").nfe(2) == 3 and counter.rows == 9
    assert counter.dim == mix.dim  # other attributes are the wrapped denoiser's
    with pytest.raises(AttributeError):
        _ = counter.no_such_attribute
