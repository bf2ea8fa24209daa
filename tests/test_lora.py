"""LoRA adapters (difflab.models.lora): start equal to the base, merge exactly (Linear, 1x1 and kxk
Conv2d, the UNet, DiT and MLP), train only A and B, count r (in + out) parameters per layer, and save
as adapter folders that refuse other base weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from difflab import models
from difflab.models.lora import (
    DEFAULT_TARGETS,
    LoRALayer,
    add_lora,
    freeze_base,
    load_adapter,
    load_lora,
    lora_disabled,
    lora_layers,
    lora_parameters,
    lora_state_dict,
    merge_lora,
    read_adapter_config,
    remove_lora,
    save_adapter,
    weights_digest,
)
from difflab.utils.folder import read_folder_weights, save_folder

TINY = {
    "unet": {
        "type": "unet",
        "in_channels": 2,
        "image_size": 8,
        "channels": 16,
        "channel_mult": [1, 2],
        "num_res_blocks": 1,
        "attention_resolutions": [4],
        "head_channels": 8,
        "num_classes": 3,
    },
    "dit": {
        "type": "dit",
        "in_channels": 2,
        "image_size": 8,
        "patch_size": 2,
        "hidden_size": 32,
        "depth": 2,
        "heads": 2,
        "num_classes": 3,
    },
    "mlp": {"type": "mlp", "dim": 3, "width": 32, "depth": 2, "num_classes": 3},
}
SHAPES = {"unet": (2, 8, 8), "dit": (2, 8, 8), "mlp": (3,)}
NETS = list(TINY)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def perturb(params, seed: int = 1, scale: float = 0.1) -> None:
    """Move parameters off their (partly zero) initialization, as training would."""
    g = _gen(seed)
    with torch.no_grad():
        for p in params:
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def make(name: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> models.Network:
    torch.manual_seed(seed)
    net = models.build(TINY[name]).to(dtype).eval()
    perturb(net.parameters(), seed + 1)
    return net


def inputs(name: str, dtype: torch.dtype = torch.float32, batch: int = 3):
    g = _gen(7)
    x = torch.randn(batch, *SHAPES[name], generator=g, dtype=dtype)
    return x, torch.rand(batch, generator=g, dtype=dtype), torch.tensor([0, 2, -1])


@pytest.mark.parametrize("name", NETS)
def test_starts_equal_to_the_base(name):
    net = make(name)
    x, t, y = inputs(name)
    before = net(x, t, y)
    names = add_lora(net, 4, generator=_gen(0))
    assert names and list(lora_layers(net)) == names
    assert torch.equal(net(x, t, y), before)  # B = 0: bit-identical
    layer = lora_layers(net)[names[0]]
    assert layer.lora_A.abs().sum() > 0 and layer.lora_B.abs().sum() == 0


def _reference(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """W x + b + (alpha / r) B A x written out: the conv update as its kernel B A."""
    s = layer.alpha / layer.rank
    if isinstance(layer, nn.Linear):
        return x @ layer.weight.T + layer.bias + s * x @ layer.lora_A.T @ layer.lora_B.T
    delta = (layer.lora_B.flatten(1) @ layer.lora_A.flatten(1)).view_as(layer.weight)
    conv = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation)
    return nn.functional.conv2d(x, layer.weight + s * delta, layer.bias, **conv)


@pytest.mark.parametrize(
    "layer, shape",
    [
        (nn.Linear(5, 7), (4, 5)),
        (nn.Conv2d(3, 6, 1), (2, 3, 5, 5)),
        (nn.Conv2d(3, 6, 3, padding=1), (2, 3, 6, 6)),
        (nn.Conv2d(3, 4, (3, 2), stride=2, padding=(1, 0), dilation=(1, 2)), (2, 3, 9, 9)),
    ],
)
def test_layer_equals_its_formula_and_merges_exactly(layer, shape):
    torch.manual_seed(0)
    net = nn.Sequential(layer).double()
    x = torch.randn(shape, dtype=torch.float64)
    base = net(x)
    assert add_lora(net, 2, alpha=3.0, targets="0") == ["0"]
    perturb([net[0].lora_B], scale=1.0)
    adapted = net(x)
    assert torch.allclose(adapted, _reference(net[0], x), rtol=0, atol=1e-12)
    assert (adapted - base).abs().max() > 1e-3
    assert merge_lora(net) == ["0"]
    assert type(net[0]) in (nn.Linear, nn.Conv2d) and not hasattr(net[0], "lora_A")
    assert torch.allclose(net(x), adapted, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", NETS)
def test_merged_network_equals_the_adapted_one(name):
    net = make(name, dtype=torch.float64)
    base_keys = list(net.state_dict())
    x, t, y = inputs(name, torch.float64)
    base = net(x, t, y)
    add_lora(net, 3, alpha=6.0, generator=_gen(0))
    perturb([layer.lora_B for layer in lora_layers(net).values()], seed=5)
    adapted = net(x, t, y)
    assert (adapted - base).abs().max() > 1e-3
    with lora_disabled(net):
        assert torch.equal(net(x, t, y), base)
    assert torch.equal(net(x, t, y), adapted)
    merge_lora(net)
    assert not lora_layers(net) and list(net.state_dict()) == base_keys
    assert torch.allclose(net(x, t, y), adapted, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", NETS)
def test_only_lora_parameters_get_gradients(name):
    net = make(name)
    add_lora(net, 2, generator=_gen(0))
    trainable = freeze_base(net)
    assert trainable == lora_parameters(net) and len(trainable) == 2 * len(lora_layers(net))
    perturb(trainable[1::2], seed=3)  # every B off zero, so every A gets a gradient too
    x, t, y = inputs(name)
    net(x, t, y).square().sum().backward()
    ids = {id(p) for p in trainable}
    assert all(p.grad is None for p in net.parameters() if id(p) not in ids)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)


def _expected_count(layer: nn.Module, rank: int) -> int:
    """r (in + out) for a Linear, r (in k_h k_w + out) for a Conv2d."""
    if isinstance(layer, nn.Linear):
        return rank * (layer.in_features + layer.out_features)
    kh, kw = layer.kernel_size
    return rank * (layer.in_channels * kh * kw + layer.out_channels)


@pytest.mark.parametrize("name", NETS)
def test_parameter_count_is_what_the_rank_predicts(name, tmp_path):
    net = make(name)
    plain = {n: m for n, m in net.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)}
    names = add_lora(net, 4)
    expected = sum(_expected_count(plain[n], 4) for n in names)
    assert sum(p.numel() for p in lora_parameters(net)) == expected
    if name == "dit":  # per block: qkv 4 (32 + 96), proj 4 (32 + 32), MLP 4 (32 + 128) twice
        assert expected == 2 * 4 * (128 + 64 + 160 + 160)
    if name == "mlp":  # per block: fc1 and fc2, 4 (32 + 32) each
        assert expected == 2 * 2 * 4 * 64
    save_adapter(tmp_path / "a", net, base="tiny")
    assert sum(t.numel() for t in read_folder_weights(tmp_path / "a").values()) == expected


def test_default_targets():
    unet, dit, mlp = make("unet"), make("dit"), make("mlp")
    names = add_lora(unet, 1)
    assert "mid.layers.1.attn.qkv" in names and "down.0.layers.0.conv2" in names
    assert not any(n.endswith((".skip", ".emb", ".conv")) or n.startswith("input") for n in names)
    assert add_lora(dit, 1) == [
        f"blocks.{i}.{part}"
        for i in range(2)
        for part in ("attn.qkv", "attn.proj", "mlp.0", "mlp.2")
    ]
    assert add_lora(mlp, 1) == [f"blocks.{i}.fc{j}" for i in range(2) for j in (1, 2)]
    assert set(DEFAULT_TARGETS) == {"unet", "dit", "mlp"}


def test_weights_digest(tmp_path):
    net = make("mlp")
    digest = weights_digest(net)
    assert digest.startswith("sha256:") and len(digest) == 7 + 64
    save_folder(tmp_path / "m", {"type": "test"}, net.state_dict())
    assert weights_digest(read_folder_weights(tmp_path / "m")) == digest  # as the folder stores it
    assert weights_digest(net.double()) == digest  # floats digested as float32
    add_lora(net, 2)
    perturb(lora_parameters(net))
    assert weights_digest(net) == digest  # the base's weights, adapters left out
    with torch.no_grad():
        net.blocks[0].fc1.weight[0, 0] += 1e-3
    assert weights_digest(net) != digest


@pytest.mark.parametrize("name", NETS)
def test_adapter_round_trip(name, tmp_path):
    net = make(name)
    base_digest = weights_digest(net)
    add_lora(net, 2, alpha=4.0, generator=_gen(0))
    freeze_base(net)
    perturb(lora_parameters(net), seed=4)
    x, t, y = inputs(name)
    adapted = net(x, t, y)
    save_adapter(tmp_path / "a", net, "tiny_" + name, base_digest, {"training": {"steps": 3}})
    config = read_adapter_config(tmp_path / "a")
    assert (
        config["rank"] == 2
        and config["alpha"] == 4.0
        and config["targets"] == list(lora_layers(net))
    )
    assert config["base"] == {"model": "tiny_" + name, "digest": base_digest}
    assert config["training"] == {"steps": 3}
    assert set(read_folder_weights(tmp_path / "a")) == set(lora_state_dict(net))
    fresh = make(name)
    assert load_adapter(tmp_path / "a", fresh) == config["targets"]
    assert torch.equal(fresh(x, t, y), adapted)
    remove_lora(fresh)  # back to the base; loading into existing adapters works too
    add_lora(fresh, 2, alpha=4.0, targets=config["targets"])
    load_adapter(tmp_path / "a", fresh, base_digest)
    assert torch.equal(fresh(x, t, y), adapted)


def test_an_adapter_for_another_base_is_refused(tmp_path):
    net = make("mlp")
    add_lora(net, 2)
    save_adapter(tmp_path / "a", net, base="mlp_a")
    other = make("mlp", seed=9)
    state = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match=r"adapter for base model 'mlp_a' \(sha256:") as e:
        load_adapter(tmp_path / "a", other)
    assert "\n" not in str(e.value)
    assert not lora_layers(other) and all(
        torch.equal(v, state[k]) for k, v in other.state_dict().items()
    )
    with pytest.raises(ValueError, match="adapter for base model"):
        load_adapter(tmp_path / "a", make("mlp"), base_digest=weights_digest(other))
    # a base changed in training (not frozen) cannot be saved as an adapter of the original
    digest = weights_digest(make("mlp"))
    perturb(net.parameters())
    with pytest.raises(ValueError, match="changed in training"):
        save_adapter(tmp_path / "b", net, "mlp_a", digest)


def test_bad_input():
    net = make("unet")
    with pytest.raises(
        ValueError, match=r"unknown LoRA target .*'mid\.layers\.1\.attn\.qkvv'\. Did you mean"
    ):
        add_lora(net, 2, targets=["*.attn.qkv", "mid.layers.1.attn.qkvv"])
    assert not lora_layers(net)  # nothing changed
    with pytest.raises(ValueError, match=r"LoRA target .* '\*\.norm1'"):
        add_lora(net, 2, targets="*.norm1")  # a GroupNorm: not adaptable
    for rank in (0, 1.5, True):
        with pytest.raises(ValueError, match="rank must be an integer >= 1"):
            add_lora(net, rank)
    with pytest.raises(ValueError, match="alpha must be a finite number > 0"):
        add_lora(net, 2, alpha=0.0)
    add_lora(net, 2, targets="*.attn.qkv")
    with pytest.raises(ValueError, match="already has a LoRA adapter"):
        add_lora(net, 2)
    with pytest.raises(ValueError, match="no default LoRA targets for a Sequential network"):
        add_lora(nn.Sequential(nn.Linear(2, 2)), 2)
    with pytest.raises(ValueError, match="grouped convolution"):
        add_lora(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), 2, targets="*")
    with pytest.raises(ValueError, match=r"not LoRA factors: input\.weight"):
        load_lora(net, {"input.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="shape mismatches"):
        load_lora(net, {k: v[:1] for k, v in lora_state_dict(net).items()})
    with pytest.raises(ValueError, match="no LoRA adapters to save"):
        save_adapter("unused", make("mlp"), "x")


def test_shipped_mnist_model():
    """The default targets on the shipped UNet: the adapted model starts as the base, its digest is
    that of the shipped weights, and merging is exact to float32 rounding."""
    from difflab import pretrained

    model = pretrained.load("mnist")
    net = model.network
    assert weights_digest(net) == weights_digest(read_folder_weights(model.folder))
    x, t = torch.randn(2, 1, 28, 28, generator=_gen(0)), torch.tensor([0.1, 0.5])
    base = net(x, t, torch.tensor([3, -1]))
    add_lora(net, 4, generator=_gen(1))
    assert torch.equal(net(x, t, torch.tensor([3, -1])), base)
    perturb([layer.lora_B for layer in lora_layers(net).values()], scale=0.01)
    adapted = net(x, t, torch.tensor([3, -1]))
    merge_lora(net)
    assert (adapted - base).abs().max() > 1e-3
    assert torch.allclose(net(x, t, torch.tensor([3, -1])), adapted, rtol=0, atol=1e-4)
    assert not any(isinstance(m, LoRALayer) for m in net.modules())
