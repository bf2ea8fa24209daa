"""General conditioning of difflab's networks (issue 21): a context vector or sequence, its learned
null for classifier-free guidance, given entries (mask, given) and their exact composition in the
denoiser, per-token time inputs through the parameterization's wrappers."""

from __future__ import annotations

import json
import math

import pytest
import torch

from difflab import models, sampling
from difflab.core import processes
from difflab.core.conditioning import impose_given, keep_given, null_like
from difflab.core.grids import karras
from difflab.core.parameterization import Parameterization
from difflab.guidance import classifier_free
from difflab.testing import random_mixture
from difflab.training.objectives import denoising_loss

VECTOR, SEQUENCE = (3,), (2, 3)  # one sample's context: [Dc] or [Tc, Dc]

NETS = {
    "mlp": ({"type": "mlp", "dim": 3, "width": 32, "depth": 2}, (3,)),
    "unet": (
        {
            "type": "unet",
            "in_channels": 2,
            "image_size": 8,
            "channels": 16,
            "channel_mult": [1, 2],
            "num_res_blocks": 1,
            "attention_resolutions": [4],
            "head_channels": 8,
        },
        (2, 8, 8),
    ),
    "dit": (
        {
            "type": "dit",
            "in_channels": 2,
            "image_size": 8,
            "patch_size": 2,
            "hidden_size": 32,
            "depth": 2,
            "heads": 2,
        },
        (2, 8, 8),
    ),
    "temporal_unet": (
        {"type": "temporal_unet", "dim": 3, "down_dims": [16, 32], "embed_dim": 16},
        (8, 3),
    ),
    "sequence_transformer": (
        {
            "type": "sequence_transformer",
            "dim": 3,
            "horizon": 8,
            "hidden_size": 32,
            "depth": 2,
            "heads": 2,
        },
        (8, 3),
    ),
}
SEQUENCE_NETS = ["temporal_unet", "sequence_transformer"]


def make(name: str, seed: int = 0, **options) -> models.Network:
    """A network of ``name`` with ``options``, its parameters moved off their (partly zero) init."""
    torch.manual_seed(seed)
    net = models.build(NETS[name][0] | options)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return net.eval()


def inputs(name: str, batch: int = 4, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *NETS[name][1], generator=g), torch.rand(batch, generator=g)


def contexts(shape: tuple[int, ...], batch: int = 4, seed: int = 5) -> torch.Tensor:
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))


def context_options(shape: tuple[int, ...]) -> dict[str, int]:
    return {"context_dim": shape[-1], "context_length": shape[0] if len(shape) == 2 else 0}


CASES = [(name, shape) for name in NETS for shape in (VECTOR, SEQUENCE)]
CASES.append(("sequence_transformer-flat", SEQUENCE))


def case(name: str, shape: tuple[int, ...], **options) -> tuple[models.Network, str]:
    if name == "sequence_transformer-flat":  # a context sequence flattened into adaLN
        return make(
            "sequence_transformer", cross_attention=False, **options, **context_options(shape)
        ), "sequence_transformer"
    return make(name, **options, **context_options(shape)), name


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_each_context_changes_the_output_and_its_null_is_learned(name, shape) -> None:
    net, kind = case(name, shape)
    x, t = inputs(kind)
    c = contexts(shape)
    out = net(x, t, context=c)
    assert out.shape == x.shape
    other = c.clone()
    other[1] += 1.0
    changed = (net(x, t, context=other) - out).flatten(1).abs().amax(1)
    assert changed[1] > 1e-4 and torch.all(changed[[0, 2, 3]] < 1e-5)  # per sample
    # the null context: None, or a row of NaN, is the learned c_null, per sample
    null = net(x, t)
    torch.testing.assert_close(net(x, t, context=null_like(c)), null, rtol=0, atol=0)
    mixed = c.clone()
    mixed[2] = math.nan
    both = net(x, t, context=mixed)
    torch.testing.assert_close(both[2], null[2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(both[0], out[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(null, out, atol=1e-4)
    assert any(n.endswith("null") for n, _ in net.named_parameters())


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_wrong_context_shapes_get_one_line_errors(name, shape) -> None:
    net, kind = case(name, shape)
    x, t = inputs(kind)
    want = ", ".join(map(str, (4, *shape)))
    bad = contexts((*shape[:-1], shape[-1] + 1))
    with pytest.raises(ValueError, match=rf"context must be floats of shape \[{want}\]") as e:
        net(x, t, context=bad)
    assert "\n" not in str(e.value) and str(list(bad.shape)) in str(e.value)
    with pytest.raises(ValueError, match="context must be floats"):
        net(x, t, context=contexts(shape)[:3])
    partly = contexts(shape)
    partly.view(4, -1)[1, 0] = math.nan
    with pytest.raises(ValueError, match="all NaN"):
        net(x, t, context=partly)
    plain = make(kind)
    with pytest.raises(ValueError, match="takes no context"):
        plain(x, t, context=contexts(shape))


def test_context_length_needs_a_context_dim() -> None:
    for name in NETS:
        with pytest.raises(ValueError, match="context_dim"):
            models.build(NETS[name][0] | {"context_length": 2})


@pytest.mark.parametrize("name", list(NETS))
def test_given_entries_are_seen_as_x_masked_values_and_mask(name) -> None:
    net = make(name, given_input=True)
    x, t = inputs(name)
    g = torch.Generator().manual_seed(7)
    mask = (torch.rand(x.shape, generator=g) < 0.5).float()
    given = torch.randn(x.shape, generator=g)
    out = net(x, t, mask=mask, given=given)
    # nothing given is the same as an all-zero mask; values where the mask is 0 are never read
    torch.testing.assert_close(net(x, t), net(x, t, mask=torch.zeros_like(x), given=given))
    junk = torch.where(mask.bool(), given, torch.full_like(given, math.nan))
    torch.testing.assert_close(net(x, t, mask=mask, given=junk), out, rtol=0, atol=0)
    assert not torch.allclose(out, net(x, t), atol=1e-4)
    with pytest.raises(ValueError, match="given is missing"):
        net(x, t, mask=mask)
    with pytest.raises(ValueError, match="does not broadcast"):
        net(x, t, mask=torch.ones(4, 2), given=given)
    with pytest.raises(ValueError, match="0 \\(generated\\) or 1"):
        net(x, t, mask=mask * 0.5, given=given)
    with pytest.raises(ValueError, match="takes no mask"):
        make(name)(x, t, mask=mask, given=given)


@pytest.mark.parametrize("name", SEQUENCE_NETS)
def test_a_mask_per_time_step_broadcasts_over_features(name) -> None:
    net = make(name, given_input=True)
    x, t = inputs(name)
    steps = torch.tensor([1.0, 1.0, 0, 0, 0, 0, 0, 0])[None, :, None].expand(4, 8, 1)
    given = torch.randn(x.shape)
    torch.testing.assert_close(
        net(x, t, mask=steps, given=given), net(x, t, mask=steps.expand(x.shape), given=given)
    )


@pytest.mark.parametrize(
    ("name", "shape"), [(n, s) for n in SEQUENCE_NETS for s in (VECTOR, SEQUENCE)]
)
def test_sequence_networks_round_trip_their_config_and_start_at_zero(name, shape) -> None:
    options = context_options(shape) | {"num_classes": 3, "given_input": True}
    torch.manual_seed(0)
    fresh = models.build(NETS[name][0] | options)
    x, t = inputs(name)
    assert torch.count_nonzero(fresh(x, t, torch.tensor([0, 1, 2, -1]), contexts(shape))) == 0
    net = make(name, **options)
    rebuilt = models.build(json.loads(json.dumps(net.config))).eval()
    rebuilt.load_state_dict(net.state_dict())
    args = (x, t, torch.tensor([0, 1, 2, -1]), contexts(shape))
    torch.testing.assert_close(rebuilt(*args), net(*args), rtol=0, atol=0)


@pytest.mark.parametrize("name", SEQUENCE_NETS)
def test_gradients_reach_every_parameter_of_the_sequence_networks(name) -> None:
    torch.manual_seed(0)
    options = context_options(SEQUENCE) | {"num_classes": 3, "given_input": True}
    net = models.build(NETS[name][0] | options)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, t = inputs(name)
    c = contexts(SEQUENCE)
    c[3] = math.nan  # context dropout: the null context learns too
    mask = torch.zeros_like(x)
    mask[:, :2] = 1
    for _ in range(3):
        opt.zero_grad()
        out = net(x, t, torch.tensor([0, 1, 2, -1]), c, mask, x)
        torch.nn.functional.mse_loss(out, torch.randn_like(x)).backward()
        opt.step()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


@pytest.mark.parametrize("name", SEQUENCE_NETS)
def test_sequence_networks_in_summary(name) -> None:
    net = models.build(NETS[name][0] | ({"horizon": 16} if name == "sequence_transformer" else {}))
    text = models.summary(net, (8, 3))
    assert text.startswith(f"{name}: {models.parameter_count(net):,} parameters")
    assert "FLOPs per sample of shape (8, 3)" in text
    assert models.flops(net, (16, 3)) > 1.9 * models.flops(net, (8, 3))


# ---------------------------------------------------------------- per-token noise levels


@pytest.mark.parametrize("name", SEQUENCE_NETS)
@pytest.mark.parametrize("prediction", ["eps", "v", "edm"])
def test_per_token_sigma_equals_per_sample_sigma_when_tokens_share_it(name, prediction) -> None:
    net = make(name)
    den = Parameterization("vp_cosine" if prediction != "edm" else "edm", prediction).denoiser(net)
    x, _ = inputs(name)
    sigma = torch.tensor([0.1, 0.5, 2.0, 10.0])
    per_sample = den(x, sigma)
    per_token = den(x, sigma[:, None, None].expand(4, 8, 1))
    torch.testing.assert_close(per_token, per_sample, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        den(x, sigma[:, None].expand(4, 8)), per_sample, rtol=1e-5, atol=1e-6
    )
    # the training path (network_output) too: a per-token loss
    eps = torch.randn_like(x)
    loss = denoising_loss(den, x, eps, sigma[:, None, None].expand(4, 8, 1), "uniform")
    torch.testing.assert_close(
        loss, denoising_loss(den, x, eps, sigma, "uniform"), rtol=1e-5, atol=0
    )


@pytest.mark.parametrize("name", SEQUENCE_NETS)
def test_each_token_is_conditioned_on_its_own_noise_level(name) -> None:
    net = make(name)
    x, _ = inputs(name)
    t = torch.full((4, 8), 0.3)
    out = net(x, t)
    moved = t.clone()
    moved[:, 5] = 0.9
    assert not torch.allclose(net(x, moved), out, atol=1e-4)
    with pytest.raises(ValueError, match=r"one per token \(4, 8\)"):
        net(x, t[:, :4])


@pytest.mark.parametrize("name", ["mlp", "unet", "dit"])
def test_networks_with_one_time_per_sample_take_a_shared_per_token_time(name) -> None:
    net = make(name)
    x, t = inputs(name)
    lead = x.shape[:2]
    torch.testing.assert_close(net(x, t[:, None].expand(*lead)), net(x, t), rtol=0, atol=0)
    varying = torch.rand(*lead)
    with pytest.raises(ValueError, match="one time per sample"):
        net(x, varying)


def test_the_wrappers_keep_a_per_sample_time_input_for_sigma_with_trailing_unit_dims() -> None:
    net = make("unet")
    den = Parameterization("vp_cosine", "eps").denoiser(net)
    x, _ = inputs("unet")
    sigma = torch.tensor([0.1, 0.5, 2.0, 10.0])
    torch.testing.assert_close(den(x, sigma[:, None, None, None]), den(x, sigma), rtol=0, atol=0)


# ---------------------------------------------------------------- given entries in the denoiser


def test_impose_and_keep_given_are_exact_on_given_entries() -> None:
    x = torch.randn(3, 5)
    mask = torch.tensor([[1, 0, 0, 1, 0]]).expand(3, 5)
    given = torch.randn(3, 5)
    out = impose_given(x, mask, given)
    assert torch.equal(out[:, [0, 3]], given[:, [0, 3]]) and torch.equal(out[:, 1], x[:, 1])
    seen = {}

    def den(x, sigma, **cond):
        seen.update(cond)
        return x * 0.5

    kept = keep_given(den)(x, 1.0, mask=mask, given=given, labels=None)
    assert torch.equal(kept[:, [0, 3]], given[:, [0, 3]])
    assert torch.equal(kept[:, [1, 2, 4]], x[:, [1, 2, 4]] * 0.5)
    assert set(seen) == {"mask", "given", "labels"}
    seen.clear()
    keep_given(den, pass_given=False)(x, 1.0, mask=mask, given=given)
    assert seen == {}
    torch.testing.assert_close(keep_given(den)(x, 1.0), x * 0.5)


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc", "ipndm"])
def test_sampling_with_the_composition_keeps_given_entries_exact(sampler) -> None:
    """Deterministic samplers on D = m g + (1 - m) D_net, started at x_T = m g + (1 - m) sigma_max
    eps, return the given values on given entries (float64: to rounding)."""
    gmm = random_mixture(4, 3, seed=3)
    g = torch.Generator().manual_seed(0)
    given = gmm.sample(64, g)
    mask = (torch.rand(64, 4, generator=g) < 0.5).double()
    sigmas = karras(12, 0.002, 80.0).double()
    x = impose_given(torch.randn(64, 4, generator=g, dtype=torch.float64) * 80.0, mask, given)
    den = keep_given(gmm.denoise, pass_given=False)  # the joint model: only the composition keeps g
    out = sampling.get(sampler)(den, x, sigmas, cond={"mask": mask, "given": given}, generator=g)
    given_entries = mask.bool()
    torch.testing.assert_close(out[given_entries], given[given_entries], rtol=0, atol=1e-12)
    assert (out[~given_entries] - given[~given_entries]).abs().max() > 1e-3


def test_a_noisy_start_reaches_the_given_values_with_the_denoised_final_step() -> None:
    gmm = random_mixture(3, 2, seed=4)
    given = gmm.sample(16, torch.Generator().manual_seed(1))
    mask = torch.tensor([[1.0, 0.0, 1.0]]).expand(16, 3)
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 80
    sigmas = karras(10, 0.002, 80.0).double()
    den = keep_given(gmm.denoise, pass_given=False)
    cond = {"mask": mask, "given": given}
    out = sampling.get("euler")(den, x, sigmas, cond=cond, final="denoised")
    torch.testing.assert_close(out[:, [0, 2]], given[:, [0, 2]], rtol=0, atol=1e-12)


# ---------------------------------------------------------------- classifier-free guidance on a context


@pytest.mark.parametrize("name", [*SEQUENCE_NETS, "mlp"])
def test_cfg_with_a_null_context_is_the_unconditional_branch(name) -> None:
    net = make(name, **context_options(VECTOR))
    den = Parameterization("vp_cosine", "v").denoiser(net)
    x, _ = inputs(name)
    sigma = torch.tensor([0.3, 1.0, 3.0, 0.5])
    c = contexts(VECTOR)
    cond, uncond = den(x, sigma, context=c), den(x, sigma)
    guided = classifier_free(den, 3.0, condition="context")
    torch.testing.assert_close(
        guided(x, sigma, context=c), uncond + 3.0 * (cond - uncond), rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(
        classifier_free(den, 0.0, condition="context")(x, sigma, context=c),
        uncond,
        rtol=1e-5,
        atol=1e-6,
    )
    torch.testing.assert_close(guided(x, sigma), uncond, rtol=0, atol=0)  # no context: unguided
    # labels and context dropped together
    labelled = make(name, num_classes=3, **context_options(VECTOR))
    den = Parameterization("vp_cosine", "v").denoiser(labelled)
    y = torch.tensor([0, 1, 2, 0])
    both = classifier_free(den, 2.0, condition=("labels", "context"))(x, sigma, labels=y, context=c)
    full, none = den(x, sigma, labels=y, context=c), den(x, sigma)
    torch.testing.assert_close(both, none + 2.0 * (full - none), rtol=1e-4, atol=1e-5)


def test_cfg_on_labels_is_unchanged_by_the_generalization() -> None:
    """The labels path builds the same 2B batch as before: [labels, null] along the batch."""
    calls = []

    def den(x, sigma, labels=None):
        calls.append(labels)
        return x * (1.0 if labels is None else labels[:, None].float())

    x = torch.randn(3, 2)
    out = classifier_free(den, 2.0)(x, 1.0, labels=torch.tensor([1, 2, 3]))
    assert torch.equal(calls[-1], torch.tensor([1, 2, 3, -1, -1, -1]))
    torch.testing.assert_close(out, -x + 2.0 * (x * torch.tensor([[1.0], [2.0], [3.0]]) + x))
    classifier_free(den, 2.0)(x, 1.0)
    assert calls[-1] is None


def test_context_dropout_in_the_objective() -> None:
    from difflab.training.objectives import Objective, drop_context

    c = torch.randn(4000, 2, 3)
    dropped = drop_context(c, 0.25, torch.Generator().manual_seed(0))
    rows = torch.isnan(dropped).flatten(1)
    assert torch.equal(rows.all(1), rows.any(1))  # whole samples
    assert abs(rows.all(1).float().mean() - 0.25) < 0.03
    assert torch.equal(dropped[~rows.all(1)], c[~rows.all(1)])
    objective = Objective(processes.get("vp_cosine"), context_dropout=0.5)
    assert objective.config["context_dropout"] == 0.5
    assert Objective.from_config(objective.config).context_dropout == 0.5
    draw = objective.draw(torch.zeros(8, 3), None, torch.Generator().manual_seed(1), c[:8])
    assert draw.context is not None and torch.isnan(draw.context).any()
    with pytest.raises(ValueError, match="context_dropout must be a probability"):
        Objective(processes.get("vp_cosine"), context_dropout=1.5)
