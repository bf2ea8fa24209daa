"""Inversion and editing (difflab.inversion) judged against exact answers: round trips of the exact
methods, the exact probability-flow inverse of a Gaussian mixture, and class edits on it."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from difflab import inversion, models, schedules
from difflab.core.parameterization import EDMPrecond
from difflab.models.class_embedding import embedding_denoiser, null_embedding
from difflab.testing import random_mixture, ring2d, stiff
from difflab.testing.checks import exponential_grid

KARRAS10 = schedules.get("karras")(10, 0.002, 80.0)
KARRAS50 = schedules.get("karras")(50, 0.002, 80.0)

# the exact methods with the settings tested; the float32 bound is the stated round-trip error
EXACT = [
    ("edict", {}, 1e-4),
    ("edict", {"level": "own"}, 2e-3),
    ("bdia", {}, 1e-4),
    ("bdia", {"gamma": 0.0}, 1e-2),
    ("direct", {}, 1e-6),
]


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def tiny_network(dtype=torch.float64, classes=3, seed=0):
    """A small random (untrained, non-zero) class-conditional MLP behind EDM preconditioning."""
    torch.manual_seed(seed)
    net = models.build({"type": "mlp", "dim": 4, "width": 32, "depth": 2, "num_classes": classes})
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)
    return EDMPrecond(net.to(dtype).eval()), net


def ring_points(n=16, seed=0):
    return ring2d().sample(n, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------ exact round trips


@pytest.mark.parametrize(("method", "options", "f32_bound"), EXACT)
@pytest.mark.parametrize("model", ["stiff", "network"])
def test_exact_methods_reconstruct_their_input(method, options, f32_bound, model):
    if model == "stiff":
        mixture = stiff(dim=16)
        x = mixture.sample(16, generator=torch.Generator().manual_seed(1))
        den64 = den32 = mixture
    else:
        den64, _ = tiny_network(torch.float64)
        den32, _ = tiny_network(torch.float32)
        x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    errors = {}
    for dtype, den in ((torch.float64, den64), (torch.float32, den32)):
        z = inversion.invert(den, x.to(dtype), KARRAS10, method=method, **options)
        assert z.x.dtype == dtype
        errors[dtype] = relative(inversion.sample(den, z), x)
    assert errors[torch.float64] <= 1e-6, errors
    assert errors[torch.float32] <= f32_bound, errors


@pytest.mark.parametrize(("method", "options"), [(m, o) for m, o, _ in EXACT])
def test_exact_round_trip_under_guidance_with_the_registered_sampler(method, options):
    """Inversion then sampling with the same settings is the identity under classifier-free
    guidance too (any denoiser, so also D_w), and the latent is noise-like, not the input."""
    mixture = ring2d()
    den = mixture.class_denoiser
    x = ring_points()
    labels = torch.arange(16) % 8
    z = inversion.invert(
        den, x, KARRAS10, method=method, cond={"labels": labels}, guidance=2.5, **options
    )
    assert inversion.get(method).exact == "algebraic"
    assert relative(inversion.sample(den, z, cond={"labels": labels}), x) <= 1e-6
    assert float(z.x.norm(dim=1).mean()) > 20  # sigma_max sqrt(2) = 113 for exact noise


def test_ddim_fixed_point_refinement_converges_to_an_exact_round_trip():
    """Each fixed-point iteration contracts by (1 - s'/s)|I - dD/dx|, so the DDIM round trip error
    falls geometrically with ``refine`` (plain DDIM inversion drifts)."""
    mixture = stiff(dim=8)
    x = mixture.sample(16, generator=torch.Generator().manual_seed(2))
    errors = []
    for refine in (0, 2, 4, 8, 30):
        z = inversion.invert(mixture, x, KARRAS50, method="ddim", refine=refine)
        errors.append(relative(inversion.sample(mixture, z), x))
    assert errors[0] > 1e-2
    assert all(b < 0.5 * a for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] <= 1e-6, errors
    assert inversion.get("ddim").exact == "fixed point"


# ------------------------------------------------------------------------- the exact flow inverse


@pytest.mark.parametrize(
    ("method", "options", "order"),
    [
        ("ddim", {}, 1.0),
        ("ddim", {"refine": 2}, 1.0),
        ("dpmpp_2m", {}, 2.0),
        ("bdia", {"gamma": 0.0}, 2.0),
    ],
)
def test_probability_flow_inversion_converges_to_the_exact_inverse_at_the_solver_order(
    method, options, order
):
    """latent - ODE(x, sigma_min -> sigma_max) shrinks like h^order on exponential grids (the exact
    flow by Dormand-Prince at rtol 1e-12)."""
    mixture = random_mixture(3, 3, seed=1, scale=1.0, min_variance=0.1)
    x = mixture.sample(32, generator=torch.Generator().manual_seed(0))
    exact = mixture.ode(x, 0.05, 10.0, rtol=1e-12).x
    steps = (8, 16, 32, 64)
    errors = []
    for n in steps:
        z = inversion.invert(mixture, x, exponential_grid(n, 10.0, 0.05), method=method, **options)
        errors.append(float((z.x - exact).square().sum(1).mean().sqrt()))
    measured = -math.log(errors[-1] / errors[0]) / math.log(steps[-1] / steps[0])
    assert abs(measured - order) < 0.15, (measured, errors)
    # the error bound of a method of this order, with the constant of its first grid
    assert errors[-1] <= 1.2 * errors[0] * (steps[0] / steps[-1]) ** order


def test_edict_own_level_is_closer_to_the_exact_flow_than_the_papers():
    mixture = stiff(dim=16)
    x = mixture.sample(32, generator=torch.Generator().manual_seed(3))
    exact = mixture.ode(x, 0.002, 80.0).x
    own = inversion.invert(mixture, x, KARRAS10, method="edict", level="own").x
    paper = inversion.invert(mixture, x, KARRAS10, method="edict").x
    assert relative(own, exact) < 0.2 * relative(paper, exact)


# ------------------------------------------------------------------------------ guided inversion


def guided_setup(dtype=torch.float64):
    den, net = tiny_network(dtype)
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(4), dtype=dtype)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    return embedding_denoiser(den, net), net, x, labels


def test_null_text_inversion_fixes_the_guided_round_trip():
    """At w = 3 sampling the w = 1 DDIM latent misses the input; optimizing the null embedding per
    step brings the guided path back onto the pivot."""
    den, net, x, labels = guided_setup()
    common = {"cond": {"labels": labels}, "guidance": 3.0}
    null = {"class_embedding": null_embedding(net, len(x))}
    plain = inversion.invert(den, x, KARRAS10, method="ddim", refine=3, **common)
    baseline = relative(inversion.sample(den, plain), x)
    fitted = inversion.invert(
        den, x, KARRAS10, method="null_text", null=null, refine=3, iterations=30, lr=0.05, **common
    )
    err = relative(inversion.sample(den, fitted), x)
    untouched = inversion.invert(
        den, x, KARRAS10, method="null_text", null=null, refine=3, iterations=0, **common
    )
    assert err < 0.2 * baseline, (err, baseline)
    assert err < 0.2 * relative(inversion.sample(den, untouched), x)
    assert len(fitted.nulls) == len(fitted.sigmas) - 1 == 9
    assert not torch.equal(fitted.nulls[0]["class_embedding"], null["class_embedding"])


def test_null_text_on_the_exact_mixture_optimizes_its_component_weights():
    """The exact model's continuous null condition is its log component weights: optimizing them
    per step cuts the guided (w = 3) round-trip error of the ring's DDIM latent."""
    mixture = ring2d()
    x = ring_points(8)
    common = {
        "cond": {"labels": nearest_mode(mixture, x)},
        "guidance": 3.0,
        "null": {"log_weights": torch.log(mixture.weights).expand(8, -1).clone()},
    }
    errors = [
        relative(
            inversion.sample(
                mixture.class_denoiser,
                inversion.invert(
                    mixture.class_denoiser,
                    x,
                    KARRAS10,
                    method="null_text",
                    iterations=k,
                    lr=0.1,
                    **common,
                ),
            ),
            x,
        )
        for k in (0, 10)
    ]
    assert errors[1] < 0.4 * errors[0], errors


def test_the_exact_class_denoiser_is_the_conditioned_mixture():
    mixture = ring2d()
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    labels = torch.tensor([3, -1, 0, 3, 7, 5])
    sigma = torch.full((6,), 0.3, dtype=torch.float64)
    out = mixture.class_denoiser(x, sigma, labels=labels)
    for i, c in enumerate(labels.tolist()):
        one = (mixture.condition(c) if c >= 0 else mixture)(x[i : i + 1], 0.3)
        assert torch.allclose(out[i : i + 1], one, atol=1e-14)
    with pytest.raises(ValueError, match="no component has label 9"):
        mixture.class_denoiser(x, sigma, labels=torch.tensor([0, 1, 2, 3, 4, 9]))
    with pytest.raises(ValueError, match="log_weights must be"):
        mixture(x, sigma, log_weights=torch.zeros(6, 3))


def test_null_text_inversion_is_batch_invariant():
    den, net, x, labels = guided_setup()
    null = {"class_embedding": null_embedding(net, len(x))}

    def run(rows):
        z = inversion.invert(
            den,
            x[rows],
            KARRAS10,
            method="null_text",
            cond={"labels": labels[rows]},
            null={"class_embedding": null["class_embedding"][rows]},
            guidance=2.0,
            iterations=3,
        )
        return inversion.sample(den, z)

    together = run(slice(None))
    alone = torch.cat([run(slice(i, i + 1)) for i in range(len(x))])
    assert torch.allclose(together, alone, atol=1e-10)


def test_direct_inversion_is_exact_at_any_guidance_and_its_latent_is_the_ddim_pivot():
    den, _, x, labels = guided_setup()
    cond = {"labels": labels}
    z = inversion.invert(den, x, KARRAS10, method="direct", cond=cond, guidance=4.0)
    pivot = inversion.invert(den, x, KARRAS10, method="ddim", cond=cond)
    assert torch.equal(z.x, pivot.x)
    assert relative(inversion.sample(den, z, cond=cond), x) <= 1e-12


def test_embedding_denoiser_takes_the_class_vector_and_passes_gradients():
    den, net, x, labels = guided_setup()
    sigma = torch.full((len(x),), 0.7, dtype=x.dtype)
    rows = net.class_embed.table.weight[labels].detach()
    plain = den(x, sigma, labels=labels)
    assert torch.equal(den(x, sigma, class_embedding=rows), plain)
    assert torch.equal(null_embedding(net, 2)[0], net.class_embed.table.weight[3])
    e = rows.clone().requires_grad_()
    den(x, sigma, class_embedding=e).sum().backward()
    assert e.grad is not None and float(e.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="class_embedding must be"):
        den(x, sigma, class_embedding=rows[:2])
    unconditional = models.build({"type": "mlp", "dim": 4, "width": 8, "depth": 1})
    with pytest.raises(ValueError, match="no class embedding"):
        null_embedding(unconditional, 2)


# ------------------------------------------------------------------------------------- editing


def nearest_mode(mixture, x):
    return torch.cdist(x.double(), mixture.means).argmin(1)


@pytest.mark.parametrize(
    ("method", "options", "guidance"),
    [
        ("edict", {"level": "own"}, 1.0),
        ("bdia", {}, 1.0),
        ("ddim", {}, 2.0),
        ("direct", {}, 2.0),
    ],
)
def test_class_edit_on_the_exact_mixture_lands_in_the_target_class(method, options, guidance):
    """Re-generation under a new class on ring2d: the reconstruction is the input's mode, the edit
    lies in the target component (the exact conditional denoiser). EDICT at the paper's level
    overshoots (benchmarks/inversion.py)."""
    mixture = ring2d()
    den = mixture.class_denoiser
    x = ring_points(8)
    source = nearest_mode(mixture, x)
    target = (source + 3) % 8
    result = inversion.edit(
        den,
        x,
        schedules.get("karras")(20, 0.002, 80.0),
        method=method,
        source={"labels": source},
        target={"labels": target},
        guidance=guidance,
        **options,
    )
    assert torch.equal(nearest_mode(mixture, result.reconstruction), source)
    assert torch.equal(nearest_mode(mixture, result.edited), target)
    assert float(result.edited.norm(dim=1).max()) < 1.2  # on the ring, not an overshoot


def test_bdia_without_damping_cannot_edit():
    """gamma = 0 reconstructs exactly but its parasitic mode grows when the condition changes."""
    mixture = ring2d()
    den = mixture.class_denoiser
    x = ring_points(8)
    source = nearest_mode(mixture, x)
    result = inversion.edit(
        den,
        x,
        KARRAS10,
        method="bdia",
        gamma=0.0,
        source={"labels": source},
        target={"labels": (source + 3) % 8},
    )
    assert relative(result.reconstruction, x) < 1e-9
    assert float(result.edited.norm(dim=1).max()) > 10


def test_sdedit_keeps_the_input_at_low_noise_and_changes_class_at_high_noise():
    mixture = ring2d()
    den = mixture.class_denoiser
    x = ring_points(8)
    target = {"labels": (nearest_mode(mixture, x) + 4) % 8}
    gens = [torch.Generator().manual_seed(i) for i in range(8)]
    low = inversion.sdedit(den, x, schedules.get("karras")(8, 0.002, 0.01), generator=gens)
    assert float((low - x).norm(dim=1).max()) < 4 * 0.01 * math.sqrt(2)  # within the noise added
    high = inversion.sdedit(
        den, x, schedules.get("karras")(20, 0.002, 20.0), cond=target, generator=gens
    )
    assert torch.equal(nearest_mode(mixture, high), target["labels"])


def test_slerp_keeps_the_norm_of_orthogonal_noise_and_hits_the_ends():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    assert torch.allclose(inversion.slerp(a, b, 0.0), a, atol=1e-6)
    assert torch.allclose(inversion.slerp(a, b, 1.0), b, atol=1e-6)
    mid = inversion.slerp(a, b.neg().add(a).sub(a), 0.5)  # b' = -b, still random
    ratio = mid.flatten(1).norm(dim=1) / a.flatten(1).norm(dim=1)
    assert float((ratio - 1).abs().max()) < 0.15
    assert (
        float((torch.lerp(a, -b, 0.5).flatten(1).norm(dim=1) / a.flatten(1).norm(dim=1)).max())
        < 0.85
    )
    assert torch.equal(inversion.slerp(a, a, 0.3), a)  # parallel: the line


@pytest.mark.parametrize("method", ["edict", "bdia", "direct"])
def test_interpolation_ends_are_the_inputs(method):
    mixture = ring2d()
    den = mixture.class_denoiser
    x = ring_points(8)
    cond = {"labels": nearest_mode(mixture, x)}
    za = inversion.invert(den, x, KARRAS10, method=method, cond=cond)
    zb = inversion.invert(den, x.flip(0), KARRAS10, method=method, cond=cond)
    path = inversion.interpolate(den, za, zb, [0.0, 0.5, 1.0], cond=cond)
    assert path.shape == (3, 8, 2)
    assert relative(path[0], x) <= 1e-6
    assert relative(path[2], x.flip(0)) <= 1e-6


# --------------------------------------------------------------------------------- bad input


def test_bad_input_gets_named_errors():
    mixture = ring2d()
    x = ring_points(4)
    with pytest.raises(ValueError, match="Did you mean 'edict'"):
        inversion.invert(mixture, x, KARRAS10, method="edit")
    with pytest.raises(ValueError, match="strictly decreasing"):
        inversion.invert(mixture, x, [1.0, 2.0, 0.5])
    with pytest.raises(ValueError, match="at least two nonzero"):
        inversion.invert(mixture, x, [1.0, 0.0])
    with pytest.raises(ValueError, match="> 0"):
        inversion.invert(mixture, x, [2.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="needs a condition"):
        inversion.invert(mixture, x, KARRAS10, guidance=2.0)
    with pytest.raises(ValueError, match="gamma"):
        inversion.invert(mixture, x, KARRAS10, method="bdia", gamma=1.0)
    with pytest.raises(ValueError, match="p \\(the EDICT"):
        inversion.invert(mixture, x, KARRAS10, method="edict", p=0.0)
    with pytest.raises(ValueError, match="unknown EDICT level"):
        inversion.invert(mixture, x, KARRAS10, method="edict", level="own_level")
    with pytest.raises(ValueError, match="refine"):
        inversion.invert(mixture, x, KARRAS10, method="ddim", refine=-1)
    with pytest.raises(ValueError, match="optimizes the unconditional input"):
        inversion.invert(
            mixture.class_denoiser,
            x,
            KARRAS10,
            method="null_text",
            cond={"labels": torch.zeros(4, dtype=torch.long)},
            guidance=2.0,
        )
    with pytest.raises(TypeError):
        inversion.invert(mixture, x, KARRAS10, method="edict", gamma=0.5)
