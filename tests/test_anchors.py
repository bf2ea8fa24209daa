"""The benchmark's anchor adapters (benchmarks/anchors.py) run other libraries' samplers on the exact
model correctly: where a diffusers scheduler or a k-diffusion sampler is the same method as a difflab
sampler on the same grid, the endpoints agree; NFE is counted; starts that differ are refused."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("torchsde")
if importlib.util.find_spec("k_diffusion") is None:  # its __init__ needs torchvision: no import
    pytest.skip("k-diffusion is not installed", allow_module_level=True)

import anchors  # benchmarks/anchors.py, on the path by conftest.py

from difflab import sampling, schedules
from difflab.core.processes import VPDiscrete
from difflab.testing import random_mixture

# diffusers' schedulers call np.array on tensors (a numpy 2 deprecation inside diffusers)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

MIXTURE = random_mixture(3, 3, seed=1)
LINEAR = VPDiscrete()


def problem(process: VPDiscrete = LINEAR, n: int = 16) -> anchors.Problem:
    g = torch.Generator().manual_seed(0)
    x0 = MIXTURE.sample(n, generator=g)
    x = x0 + process.sigma_max * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    return anchors.exact_problem(MIXTURE, process, x)


def method(library: str, sampler: str, setting: str = "", grid: str = "-") -> anchors.Method:
    if library == "diffusers":
        pool = anchors.diffusers_methods()
    else:
        pool = anchors.k_diffusion_methods([grid])
    return next(
        m for m in pool if (m.sampler, m.setting, m.grid) == (sampler, setting, grid)
    )  # fmt: skip


def scheduler_table(name: str) -> VPDiscrete:
    """The float32 alphas_cumprod table diffusers' schedulers build, as a difflab process."""
    import diffusers

    return VPDiscrete(alphas_cumprod=getattr(diffusers, name)().alphas_cumprod.double())


def euler_denoised(p: anchors.Problem, sigmas: torch.Tensor) -> torch.Tensor:
    return sampling.get("euler")(MIXTURE, p.x.clone(), sigmas, final="denoised")


@pytest.mark.parametrize("steps", [4, 10])
@pytest.mark.parametrize(
    ("name", "scheduler"),
    [("DDIM", "DDIMScheduler"), ("EulerDiscrete", "EulerDiscreteScheduler")],
)
def test_diffusers_trailing_is_euler_with_final_denoised(
    name: str, scheduler: str, steps: int
) -> None:
    """DDIM (sample x_t) and Euler (sample in sigma coordinates) with trailing spacing are difflab's
    euler with final="denoised" on the scheduler's trailing levels, to float32 tolerance: diffusers
    computes its coefficients in float32 (1/sqrt(alpha_bar) = 157 amplifies their rounding), Euler
    even its sample (|x| ~ 157 at the start)."""
    p = problem()
    job = method("diffusers", name, "timestep_spacing=trailing").prepare(p, steps, 0)
    expected = euler_denoised(
        p, schedules.uniform_t(steps, process=scheduler_table(scheduler), spacing="trailing")
    )
    torch.testing.assert_close(job(), expected, rtol=0, atol=1e-5)
    assert job.counter.calls == steps


@pytest.mark.parametrize("name", ["euler", "dpmpp_2m"])
def test_k_diffusion_is_difflab_with_final_denoised(name: str) -> None:
    p = problem()
    job = method("k-diffusion", name, grid="karras").prepare(p, 7, 0)
    sigmas = schedules.karras(7, LINEAR.sigma_min, LINEAR.sigma_max)
    expected = sampling.get(name)(MIXTURE, p.x.clone(), sigmas, final="denoised")
    torch.testing.assert_close(job(), expected, rtol=0, atol=1e-12)
    assert job.counter.calls == 7


def test_diffusers_start_converts_coordinates() -> None:
    """A VP scheduler gets x_t = x / sqrt(1 + sigma_T^2) and its endpoint comes back at sigma = 0:
    the first eps it is asked for is the exact E[eps | x] at sigma_T."""
    p = problem()
    seen = []

    def spy(table: VPDiscrete) -> anchors.EpsNetwork:
        def eps(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            seen.append((x_t, float(t)))
            return anchors.exact_eps_network(MIXTURE, table)(x_t, t)

        return eps

    spied = anchors.Problem(p.process, p.x, p.denoiser, spy)
    method("diffusers", "DDIM", "timestep_spacing=trailing").prepare(spied, 5, 0)()
    x_t, t = seen[0]
    sigma = float(scheduler_table("DDIMScheduler").sigmas[-1])
    assert t == 999
    torch.testing.assert_close(x_t * (1 + sigma**2) ** 0.5, p.x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("library", "sampler", "setting", "grid", "budget", "nfe"),
    [
        ("diffusers", "HeunDiscrete", "timestep_spacing=trailing", "-", 10, 9),
        ("diffusers", "DPMSolverMultistep", "solver_order=3,timestep_spacing=trailing", "-", 6, 6),
        ("k-diffusion", "heun", "", "karras", 10, 9),
        ("k-diffusion", "dpm_2", "", "karras", 6, 5),
        ("k-diffusion", "lms", "", "trailing", 5, 5),
    ],
)
def test_nfe_within_budget_is_counted(
    library: str, sampler: str, setting: str, grid: str, budget: int, nfe: int
) -> None:
    m = method(library, sampler, setting, grid)
    job = m.prepare(problem(n=4), m.steps_for(budget), 0)
    job()
    assert job.counter.calls == nfe


def test_difflab_methods_count_and_skip() -> None:
    methods = anchors.difflab_methods("heun", {}, ["karras", "ays"])
    assert methods[0].steps_for(10) == 5  # 2n - 1 <= 10
    job = methods[0].prepare(problem(n=4), 5, 0)
    job()
    assert job.counter.calls == 9
    with pytest.raises(anchors.Unsupported, match="not sigma_max"):  # ays starts at 14.6, not 157
        methods[1].prepare(problem(n=4), 5, 0)


def test_adaptive_anchor_runs_to_zero() -> None:
    """dpm_adaptive stops at sigma_min (0.01); the adapter's final D(x, sigma_min) takes it to 0."""
    m = next(m for m in anchors.k_diffusion_methods([]) if m.setting == "rtol=0.001")
    p = problem()
    job = m.prepare(p, m.steps_for(50), 0)
    y = job()
    exact = MIXTURE.ode(p.x, LINEAR.sigma_max, 0.0).x
    assert float((y - exact).square().mean(1).sqrt().mean()) < 0.003
    assert job.counter.calls > 10


def test_leading_spacing_is_refused() -> None:
    leading = anchors.DiffusersAnchor("DDIM", False, False, {"clip_sample": False}, [])
    m = anchors._diffusers_method(leading, {"timestep_spacing": "leading"})
    with pytest.raises(anchors.Unsupported, match="not sigma_max"):
        m.prepare(problem(), 10, 0)


def test_zero_cost_jobs_repeat_after_reset() -> None:
    """The overhead benchmark's path: a zero-cost model, the same job run again after reset()."""
    p = anchors.zero_cost_problem(LINEAR, torch.randn(1, 2) * LINEAR.sigma_max)
    for m in [
        method("diffusers", "UniPCMultistep", "solver_order=3,solver_type=bh2,timestep_spacing=trailing"),
        method("k-diffusion", "dpmpp_3m_sde", "", "karras"),
        *anchors.difflab_methods("dpmpp_2m", {}, ["karras"]),
    ]:  # fmt: skip
        job = m.prepare(p, m.steps_for(12), 0)
        first = job()
        job.reset()
        second = job()
        assert job.counter.calls == 24
        assert first.dtype == torch.float32 and bool(torch.isfinite(second).all())


def test_k_diffusion_loads_without_torchvision() -> None:
    sampling_module = anchors.k_diffusion_sampling()
    assert callable(sampling_module.sample_dpmpp_2m)
    if "torchvision" in sys.modules:
        assert sys.modules["torchvision"].__spec__ is not None  # the real one, not a stand-in


def test_local_sliced_w2() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, 3, generator=g), torch.randn(200, 3, generator=g) + 1.0
    assert float(anchors._sliced_w2(a, a, 64, torch.Generator().manual_seed(1))) == 0.0
    d = float(anchors._sliced_w2(a, b, 256, torch.Generator().manual_seed(1)))
    assert d == pytest.approx(1.0, rel=0.2)  # a shift by (1, 1, 1): E (u.v)^2 = |v|^2 / 3 = 1
