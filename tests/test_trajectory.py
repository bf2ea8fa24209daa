"""Trajectories with log-probabilities (issue 22 item 1): the sampler's own output, each step's
Gaussian density (against an independent recomputation, the generator's own noise, and the DDPM /
DDIM posterior in VP coordinates), normalization on a 1-D grid, re-evaluation under the same and
another denoiser, gradients against finite differences, per-sample seeds."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from difflab import sampling
from difflab.core.counting import CountingDenoiser
from difflab.testing import random_mixture
from difflab.testing.checks import exponential_grid

# name -> options putting noise on every step but the last (SA-Solver's default interval is narrow)
SUPPORTED = {
    "consistency": {},
    "ddim_eta": {"eta": 0.5},
    "ddpm": {},
    "dpm_2_ancestral": {},
    "dpmpp_2m_sde": {},
    "dpmpp_2s_ancestral": {"eta": 0.7},
    "dpmpp_3m_sde": {"eta": 0.6},
    "er_sde": {},
    "euler_ancestral": {"s_noise": 0.9},
    "res_multistep_ancestral": {},
    "sa_solver": {"noise_interval": (0.0, math.inf)},
}
NAMES = sorted(SUPPORTED)
MIX = random_mixture(2, 3, seed=1)
GRID = exponential_grid(8, 10.0, 0.05, zero=True)  # 9 intervals, the last into 0


def start(n: int = 4, seed: int = 5, dim: int = 2) -> torch.Tensor:
    return 10.0 * torch.randn(
        n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


def run(name: str, x: torch.Tensor, grid: torch.Tensor = GRID, seed: int = 3, **extra):
    gen = torch.Generator().manual_seed(seed)
    return sampling.trajectory(name, MIX, x, grid, generator=gen, **SUPPORTED[name], **extra)


def normal_log_prob(x: torch.Tensor, mean: torch.Tensor, std: float) -> torch.Tensor:
    return torch.distributions.Normal(mean, std).log_prob(x).flatten(1).sum(1)


def test_the_supported_samplers_and_a_clear_error_for_the_others():
    assert sampling.transition_samplers() == NAMES
    for name in ("edm", "restart", "seeds_2", "dpmpp_sde", "euler"):
        with pytest.raises(
            ValueError, match=r"no Gaussian transitions.*supported: consistency, ddim_eta"
        ):
            sampling.trajectory(name, MIX, start(), GRID)
    with pytest.raises(ValueError, match="option"):
        sampling.trajectory("ddpm", MIX, start(), GRID, churn=1.0)


@pytest.mark.parametrize(
    ("name", "noise"), [(n, k) for n in NAMES for k in sampling.info(n).noises]
)
@pytest.mark.parametrize("grid", ["zero", "above", "inf"])
def test_last_state_is_the_samplers_output_bit_for_bit(name, noise, grid):
    levels = {
        "zero": GRID,
        "above": GRID[:-1],
        "inf": torch.cat([GRID.new_tensor([math.inf]), GRID[1:]]),
    }[grid]
    x = start() / (10.0 if grid == "inf" else 1.0)
    extra = {"noise": noise} if len(sampling.info(name).noises) > 1 else {}
    gens = sampling.generators(7, len(x))
    t = sampling.trajectory(name, MIX, x, levels, generator=gens, **SUPPORTED[name], **extra)
    counted = CountingDenoiser(MIX)
    out = sampling.get(name)(
        counted, x, levels, generator=sampling.generators(7, len(x)), **SUPPORTED[name], **extra
    )
    assert torch.equal(t.xs[-1], out)
    assert torch.equal(t.xs[0], x)
    n = len(levels) - 1
    assert t.xs.shape == (n + 1, *x.shape) and t.means.shape == (n, *x.shape)
    assert t.stds.shape == (n,) and t.log_probs.shape == (n, len(x))
    assert t.nfe == counted.calls
    # deterministic steps: into 0 and out of sigma = inf; all others draw noise
    expected = torch.ones(n, dtype=torch.bool)
    expected[-1] = grid == "above"
    expected[0] = grid != "inf"
    assert torch.equal(t.stochastic, expected)
    assert torch.equal(t.log_probs[~expected], torch.zeros_like(t.log_probs[~expected]))
    assert torch.equal(t.means[~expected], t.xs[1:][~expected])


@pytest.mark.parametrize("name", NAMES)
def test_each_step_is_the_gaussian_of_its_recorded_mean_and_std(name):
    x = start()
    t = run(name, x)
    for i in torch.nonzero(t.stochastic).flatten().tolist():
        expected = normal_log_prob(t.xs[i + 1], t.means[i], float(t.stds[i]))
        torch.testing.assert_close(t.log_probs[i], expected, rtol=1e-12, atol=1e-12)
    # the step is mean + std z with z the generator's own draws, one per stochastic step
    gen = torch.Generator().manual_seed(3)
    for i in torch.nonzero(t.stochastic).flatten().tolist():
        z = torch.randn(x.shape, generator=gen, dtype=x.dtype)
        torch.testing.assert_close(t.xs[i + 1], t.means[i] + t.stds[i] * z, rtol=1e-13, atol=1e-12)
    assert float(t.stds.min()) == 0.0 and float(t.stds[:-1].min()) > 0


def vp_posterior(x: torch.Tensor, sigma: float, sigma_next: float, eta: float) -> tuple:
    """DDIM's q(x_{t-1} | x_t, x0 = D) (Song et al. 2021, eq. 12; eta = 1: DDPM's posterior, Ho
    et al. 2020, eq. 7) in VP coordinates x_t = sqrt(ab) x, mapped back: (mean, std) of x'."""
    ab, ab_next = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)
    x_t = math.sqrt(ab) * x
    x0 = MIX(x, torch.full((len(x),), sigma, dtype=x.dtype))
    beta = 1 - ab / ab_next
    if eta == 1:  # DDPM: the posterior mean's two coefficients, the variance beta-tilde
        mean = (
            math.sqrt(ab_next) * beta / (1 - ab) * x0
            + math.sqrt(1 - beta) * (1 - ab_next) / (1 - ab) * x_t
        )
        var = (1 - ab_next) / (1 - ab) * beta
    else:
        var = eta**2 * (1 - ab_next) / (1 - ab) * beta
        eps = (x_t - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
        mean = math.sqrt(ab_next) * x0 + math.sqrt(1 - ab_next - var) * eps
    return mean / math.sqrt(ab_next), math.sqrt(var) / math.sqrt(ab_next)


@pytest.mark.parametrize(("name", "eta"), [("ddpm", 1.0), ("ddim_eta", 0.5), ("ddim_eta", 0.2)])
def test_ddpm_and_ddim_steps_are_the_vp_posterior(name, eta):
    x = start()
    t = sampling.trajectory(name, MIX, x, GRID, generator=torch.Generator().manual_seed(1), eta=eta)
    for i in range(len(GRID) - 2):
        mean, std = vp_posterior(t.xs[i], float(GRID[i]), float(GRID[i + 1]), eta)
        torch.testing.assert_close(t.means[i], mean, rtol=1e-10, atol=1e-10)
        assert float(t.stds[i]) == pytest.approx(std, rel=1e-12)
        torch.testing.assert_close(
            t.log_probs[i], normal_log_prob(t.xs[i + 1], mean, std), rtol=1e-9, atol=1e-9
        )


@pytest.mark.parametrize(
    "name", ["ddpm", "dpmpp_3m_sde", "er_sde", "sa_solver", "dpmpp_2s_ancestral"]
)
def test_a_transition_density_integrates_to_one_on_a_1d_grid(name):
    mix = random_mixture(1, 3, seed=2)
    x = start(1, dim=1)
    t = sampling.trajectory(
        name, mix, x, GRID, generator=torch.Generator().manual_seed(0), **SUPPORTED[name]
    )
    k = 4  # a step with history behind it (multistep D's, SA-Solver's corrector)
    mean, std = float(t.means[k, 0, 0]), float(t.stds[k])
    u = torch.linspace(mean - 9 * std, mean + 9 * std, 4001, dtype=torch.float64)
    xs = t.xs.expand(-1, len(u), -1).clone()
    xs[k + 1, :, 0] = u
    density = sampling.log_probs(name, mix, dataclasses.replace(t, xs=xs), **SUPPORTED[name])[
        k
    ].exp()
    assert float(torch.trapezoid(density, u)) == pytest.approx(1.0, abs=1e-9)
    assert float(u[density.argmax()]) == pytest.approx(mean, abs=float(u[1] - u[0]))


@pytest.mark.parametrize("name", NAMES)
def test_log_probs_re_evaluate_the_recorded_steps(name):
    x = start()
    t = run(name, x)
    counted = CountingDenoiser(MIX)
    again = sampling.log_probs(name, counted, t, **SUPPORTED[name])
    torch.testing.assert_close(again, t.log_probs, rtol=1e-13, atol=1e-12)
    assert counted.calls == t.nfe
    other = random_mixture(2, 3, seed=4)
    moved = sampling.log_probs(name, other, t, **SUPPORTED[name])
    steps = t.stochastic
    gap = (moved - t.log_probs)[steps].abs()
    assert bool((gap > 0).all()) and float(gap.mean()) > 0.05
    assert torch.equal(moved[~steps], t.log_probs[~steps])


def test_log_probs_from_sigma_inf_and_with_brownian_noise():
    x = start() / 10
    levels = torch.cat([GRID.new_tensor([math.inf]), GRID[1:]])
    for name, extra in [("ddim_eta", {"noise": "brownian"}), ("sa_solver", {"pece": True})]:
        t = run(name, x, levels, **extra)
        again = sampling.log_probs(name, MIX, t, **SUPPORTED[name], **extra)
        torch.testing.assert_close(again, t.log_probs, rtol=1e-13, atol=1e-12)
    with pytest.raises(ValueError, match="states for a grid"):
        sampling.log_probs("ddpm", MIX, dataclasses.replace(t, xs=t.xs[1:]))


class Tilted(torch.nn.Module):
    """The exact mixture denoiser plus a tiny learned correction: a 1-D toy with parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.theta = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.lin = torch.nn.Linear(1, 1, dtype=torch.float64)
        torch.nn.init.zeros_(self.lin.bias)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        c = sigma.reshape(-1, 1) ** 2 + 1
        return MIX_1D(x, sigma) + self.theta * torch.tanh(x / c.sqrt()) + 0.1 * self.lin(x / c)


MIX_1D = random_mixture(1, 3, seed=3)


@pytest.mark.parametrize(
    "name", ["ddpm", "dpmpp_2m_sde", "er_sde", "sa_solver", "dpmpp_2s_ancestral"]
)
def test_log_probs_are_differentiable_and_match_finite_differences(name):
    model = Tilted()
    x = start(3, dim=1)
    with torch.no_grad():
        t = sampling.trajectory(
            name, model, x, GRID, generator=sampling.generators(1, 3), **SUPPORTED[name]
        )
    objective = sampling.log_probs(name, model, t, **SUPPORTED[name]).sum()
    objective.backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.parameters())
    h = 1e-6
    with torch.no_grad():
        values = []
        for sign in (1, -1):
            model.theta.fill_(sign * h)
            values.append(float(sampling.log_probs(name, model, t, **SUPPORTED[name]).sum()))
    assert float(model.theta.grad) == pytest.approx((values[0] - values[1]) / (2 * h), rel=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_a_samples_trajectory_does_not_depend_on_its_batch(name):
    x = start(5)
    noise = {"noise": "brownian"} if "brownian" in sampling.info(name).noises else {}
    together = sampling.trajectory(
        name, MIX, x, GRID, generator=sampling.generators(9, 5), **SUPPORTED[name], **noise
    )
    for j in (0, 3):
        alone = sampling.trajectory(
            name, MIX, x[j : j + 1], GRID, generator=sampling.generators(9, 5)[j : j + 1],
            **SUPPORTED[name], **noise,
        )  # fmt: skip
        assert torch.equal(alone.xs[:, 0], together.xs[:, j])
        assert torch.equal(alone.means[:, 0], together.means[:, j])
        assert torch.equal(alone.log_probs[:, 0], together.log_probs[:, j])
