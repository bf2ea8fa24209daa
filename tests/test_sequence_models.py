"""The symmetries of the sequence networks: the temporal UNet commutes with shifts along time by
multiples of its total downsampling (away from the ends), the transformer with permutations of its
tokens when it has no positions, and a causal transformer's output at step t ignores x after t."""

from __future__ import annotations

import pytest
import torch

from difflab import models


def perturbed(config: dict, seed: int = 0) -> models.Network:
    torch.manual_seed(seed)
    net = models.build(config)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return net.eval().double()


UNET = {"type": "temporal_unet", "dim": 2, "down_dims": [8, 16, 16], "embed_dim": 16}


def padded(content: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """content [B, n, D] placed at ``start`` in zeros of ``length`` steps."""
    x = torch.zeros(content.shape[0], length, content.shape[2], dtype=content.dtype)
    x[:, start : start + content.shape[1]] = content
    return x


LENGTH, START, EDGE = 512, 244, 128  # EDGE: beyond the receptive field (~122 steps) of the ends


def test_temporal_unet_commutes_with_shifts_by_its_downsampling() -> None:
    """Content in a long zero sequence, shifted by 4 = 2^(levels - 1) steps: the output shifts with
    it away from the ends (zero padding there; GroupNorm's statistics are over the same multiset of
    values). A shift by 1 breaks the stride-2 phase and changes more than rounding."""
    net = perturbed(UNET)
    content = torch.randn(2, 24, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([3.0, 500.0], dtype=torch.float64)
    base = net(padded(content, START, LENGTH), t)[:, EDGE:-EDGE]
    shifted = net(padded(content, START + 4, LENGTH), t)[:, EDGE + 4 : -EDGE + 4]
    torch.testing.assert_close(shifted, base, rtol=0, atol=1e-10)
    odd = net(padded(content, START + 1, LENGTH), t)[:, EDGE + 1 : -EDGE + 1]
    assert (odd - base).abs().max() > 1e-4


def test_temporal_unet_with_per_token_time_shifts_with_its_times() -> None:
    net = perturbed(UNET)
    content = torch.randn(1, 24, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    times = 100 + 900 * torch.rand(
        1, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )

    def run(shift: int) -> torch.Tensor:
        t = torch.full((1, LENGTH), 300.0, dtype=torch.float64)
        t[:, START + shift : START + shift + 24] = times
        return net(padded(content, START + shift, LENGTH), t)[:, EDGE + shift : -EDGE + shift]

    torch.testing.assert_close(run(4), run(0), rtol=0, atol=1e-10)


def test_temporal_unet_input_checks() -> None:
    net = models.build(UNET)
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.zeros(1, 10, 2), torch.zeros(1))
    with pytest.raises(ValueError, match=r"\[B, T, 2\]"):
        net(torch.zeros(1, 8, 3), torch.zeros(1))
    with pytest.raises(ValueError, match="groups 8 does not divide the width 12"):
        models.build(UNET | {"down_dims": [12, 16]})


TRANSFORMER = {
    "type": "sequence_transformer",
    "dim": 3,
    "horizon": 10,
    "hidden_size": 32,
    "depth": 2,
    "heads": 4,
    "context_dim": 2,
    "context_length": 3,
    "num_classes": 2,
    "given_input": True,
}


def transformer_inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 10, 3, generator=g, dtype=torch.float64)
    return {
        "x": x,
        "time": torch.rand(2, 10, generator=g, dtype=torch.float64) * 1000,
        "labels": torch.tensor([0, 1]),
        "context": torch.randn(2, 3, 2, generator=g, dtype=torch.float64),
        "mask": (torch.rand(2, 10, 1, generator=g) < 0.5).double(),
        "given": torch.randn(2, 10, 3, generator=g, dtype=torch.float64),
    }


def test_transformer_without_positions_is_permutation_equivariant() -> None:
    net = perturbed(TRANSFORMER | {"position_embedding": "none"})
    inputs = transformer_inputs()
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    permuted = dict(inputs)
    for key in ("x", "time", "mask", "given"):
        permuted[key] = inputs[key][:, perm]
    torch.testing.assert_close(net(**permuted), net(**inputs)[:, perm], rtol=0, atol=1e-10)
    # with positions, order matters
    net = perturbed(TRANSFORMER)
    assert (net(**permuted) - net(**inputs)[:, perm]).abs().max() > 1e-4


@pytest.mark.parametrize("positions", ["sincos", "learned", "rotary"])
def test_causal_transformer_output_at_t_ignores_inputs_after_t(positions) -> None:
    net = perturbed(TRANSFORMER | {"causal": True, "position_embedding": positions})
    inputs = transformer_inputs()
    out = net(**inputs)
    for t in (0, 4, 8):
        later = dict(inputs)
        for key in ("x", "time", "given"):
            later[key] = inputs[key].clone()
            later[key][:, t + 1 :] = torch.randn_like(later[key][:, t + 1 :]).abs() * 7
        changed = net(**later)
        torch.testing.assert_close(changed[:, : t + 1], out[:, : t + 1], rtol=0, atol=1e-10)
        assert (changed[:, t + 1 :] - out[:, t + 1 :]).abs().max() > 1e-4
    acausal = perturbed(TRANSFORMER | {"position_embedding": positions})
    later["x"] = inputs["x"].clone()
    later["x"][:, 9] += 1.0
    assert (acausal(**later)[:, 0] - acausal(**inputs)[:, 0]).abs().max() > 1e-6


def test_transformer_lengths() -> None:
    net = models.build(TRANSFORMER | {"given_input": False})
    x = torch.zeros(1, 6, 3)
    assert net(x, torch.zeros(1)).shape == (1, 6, 3)  # shorter than the horizon
    with pytest.raises(ValueError, match="more than horizon 10"):
        net(torch.zeros(1, 11, 3), torch.zeros(1))
    rotary = models.build(TRANSFORMER | {"given_input": False, "position_embedding": "rotary"})
    assert rotary(torch.zeros(1, 16, 3), torch.zeros(1)).shape == (1, 16, 3)
    with pytest.raises(ValueError, match="position embedding"):
        models.build(TRANSFORMER | {"position_embedding": "alibi"})
