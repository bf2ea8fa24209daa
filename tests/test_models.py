"""Networks of difflab.models: shapes, config round trip, labels, zero init, batch invariance,
gradient flow, the identity-attention switch, memory formats and autocast."""

from __future__ import annotations

import json

import pytest
import torch

from difflab import models

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
    "mlp": {"type": "mlp", "dim": 3, "width": 32, "depth": 2, "num_classes": 3},
    "dit": {
        "type": "dit",
        "in_channels": 2,
        "image_size": 8,
        "patch_size": 2,
        "hidden_size": 32,
        "depth": 2,
        "heads": 2,
        "num_classes": 3,
        "position_embedding": "learned",
    },
}
SHAPES = {"unet": (2, 8, 8), "mlp": (3,), "dit": (2, 8, 8)}
ATTENTION_NETS = ["unet", "dit"]


def make(name: str, seed: int = 0, **overrides) -> models.Network:
    torch.manual_seed(seed)
    return models.build(TINY[name] | overrides)


def perturb(net: torch.nn.Module, seed: int = 1, scale: float = 0.1) -> torch.nn.Module:
    """Move every parameter off its (partly zero) initialization, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return net


def inputs(name: str, batch: int = 4, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *SHAPES[name], generator=g)
    return x, torch.rand(batch, generator=g)


NETS = list(TINY)


@pytest.mark.parametrize("name", NETS)
def test_output_shape_and_zero_init(name: str) -> None:
    net = make(name)
    x, t = inputs(name)
    out = net(x, t, torch.tensor([0, 1, 2, -1]))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.count_nonzero(out) == 0  # zero-initialized output layer


@pytest.mark.parametrize("name", NETS)
def test_config_round_trip(name: str) -> None:
    net = perturb(make(name, seed=3)).eval()
    config = json.loads(json.dumps(net.config))
    assert config["type"] == name
    rebuilt = models.build(config).eval()
    assert rebuilt.config == net.config
    rebuilt.load_state_dict(net.state_dict())
    x, t = inputs(name)
    labels = torch.tensor([0, 2, -1, 1])
    torch.testing.assert_close(rebuilt(x, t, labels), net(x, t, labels), rtol=0, atol=0)
    torch.manual_seed(3)
    fresh, twin = models.build(config).state_dict(), make(name, seed=3).state_dict()
    assert list(fresh) == list(twin)
    assert all(torch.equal(fresh[k], twin[k]) for k in fresh)  # same seed, same initialization


@pytest.mark.parametrize("name", NETS)
def test_null_labels(name: str) -> None:
    net = perturb(make(name)).eval()
    x, t = inputs(name)
    null = net(x, t, torch.full((4,), -1))
    torch.testing.assert_close(net(x, t), null, rtol=0, atol=0)
    assert not torch.allclose(net(x, t, torch.tensor([0, 1, 2, 0])), null)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        net(x, t, torch.tensor([0, 1, 3, 0]))
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        net(x, t, torch.tensor([0, -2, 1, 0]))
    with pytest.raises(ValueError, match="shape"):
        net(x, t, torch.tensor([0, 1]))


@pytest.mark.parametrize("name", NETS)
def test_unconditional_rejects_labels(name: str) -> None:
    net = make(name, num_classes=0)
    x, t = inputs(name)
    net(x, t, torch.full((4,), -1))
    with pytest.raises(ValueError, match="unconditional"):
        net(x, t, torch.tensor([0, 1, 2, 0]))


@pytest.mark.parametrize("name", NETS)
def test_batch_invariance(name: str) -> None:
    net = perturb(make(name)).eval()
    x, t = inputs(name, batch=5)
    labels = torch.tensor([0, 1, 2, -1, 1])
    full = net(x, t, labels)
    for i in (0, 3):
        alone = net(x[i : i + 1], t[i : i + 1], labels[i : i + 1])
        torch.testing.assert_close(alone[0], full[i], rtol=1e-5, atol=1e-5)
    scrambled = net(torch.cat([x[:2], torch.randn_like(x[2:])]), t, labels)
    torch.testing.assert_close(scrambled[:2], full[:2], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NETS)
def test_gradients_reach_every_parameter(name: str) -> None:
    net = make(name)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, t = inputs(name)
    labels = torch.tensor([0, 1, 2, -1])
    for _ in range(3):  # zero-initialized layers pass gradient on once they have moved
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(x, t, labels), torch.randn_like(x)).backward()
        opt.step()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


@pytest.mark.parametrize("name", ATTENTION_NETS)
def test_identity_attention_switch(name: str) -> None:
    net = perturb(make(name)).eval()
    x, t = inputs(name)
    layers = models.attention_layers(net)
    assert layers
    base = net(x, t)
    for layer in layers:
        with models.identity_attention(net, [layer]):
            assert layers[layer].identity
            assert not torch.allclose(net(x, t), base)
        assert not layers[layer].identity
    torch.testing.assert_close(net(x, t), base, rtol=0, atol=0)
    with (
        pytest.raises(ValueError, match="unknown attention layer"),
        models.identity_attention(net, ["nope"]),
    ):
        pass


def test_identity_attention_is_the_value_projection() -> None:
    torch.manual_seed(0)
    attn = models.Attention(8, heads=2)
    x = torch.randn(3, 5, 8)
    attn.identity = True
    v = x @ attn.qkv.weight[16:].T + attn.qkv.bias[16:]
    torch.testing.assert_close(attn(x), attn.proj(v))
    # a single token attends only to itself: the identity map is the true map
    attn.identity = False
    single = attn(x[:, :1])
    attn.identity = True
    torch.testing.assert_close(attn(x[:, :1]), single)


@pytest.mark.parametrize(
    ("name", "options"),
    [("unet", {"attention_resolutions": [], "mid_attention": False}), ("mlp", {})],
)
def test_nets_without_attention_ignore_the_switch(name: str, options: dict) -> None:
    net = perturb(make(name, **options)).eval()
    assert models.attention_layers(net) == {}
    x, t = inputs(name)
    base = net(x, t)
    with models.identity_attention(net):
        torch.testing.assert_close(net(x, t), base, rtol=0, atol=0)


def test_unet_mnist_config_sizes() -> None:
    config = {
        "type": "unet",
        "image_size": 28,
        "channels": 32,
        "channel_mult": [1, 2, 2],
        "attention_resolutions": [7],
        "num_classes": 10,
    }
    net = perturb(models.build(config)).eval()
    x = torch.randn(2, 1, 28, 28)
    assert net(x, torch.tensor([10.0, 500.0]), torch.tensor([3, -1])).shape == x.shape
    assert len(models.attention_layers(net)) == 2 + 3 + 1  # down and up blocks at 7x7, and mid
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(1, 1, 30, 30), torch.zeros(1))
    with pytest.raises(ValueError, match="divisible by 2\\^3"):
        models.build(config | {"channel_mult": [1, 2, 2, 2]})
    with pytest.raises(ValueError, match="attention resolution 8"):
        models.build(config | {"attention_resolutions": [8]})


def test_unet_channels_last_and_bf16_autocast() -> None:
    net = perturb(make("unet"), scale=0.05).eval()
    x, t = inputs("unet")
    labels = torch.tensor([0, 1, 2, -1])
    ref = net(x, t, labels)
    net_cl = net.to(memory_format=torch.channels_last)
    x_cl = x.to(memory_format=torch.channels_last)
    torch.testing.assert_close(net_cl(x_cl, t, labels), ref, rtol=1e-4, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = net_cl(x_cl, t, labels)
    assert low.dtype == torch.float32 and low.shape == x.shape
    assert (low - ref).norm() < 0.05 * ref.norm()


def test_dit_sizes_and_position_embedding() -> None:
    net = perturb(make("dit", position_embedding="sincos")).eval()
    assert "pos" not in net.state_dict()  # fixed, rebuilt from the config
    x, t = inputs("dit")
    assert net(x, t).shape == x.shape
    with pytest.raises(ValueError, match=r"\[B, 2, 8, 8\]"):
        net(torch.randn(1, 2, 16, 16), torch.zeros(1))
    with pytest.raises(ValueError, match="patch_size 3 does not divide image_size 8"):
        make("dit", patch_size=3)
    with pytest.raises(ValueError, match="unknown position embedding"):
        make("dit", position_embedding="rope")
    pos = models.dit.sincos_2d(4, 3)  # [sin row, cos row, sin col, cos col] at frequency 1
    rows, cols = torch.arange(3.0).repeat_interleave(3), torch.arange(3.0).repeat(3)
    expected = torch.stack([rows.sin(), rows.cos(), cols.sin(), cols.cos()], dim=1)
    torch.testing.assert_close(pos, expected)


def test_mlp_input_checks() -> None:
    net = make("mlp")
    with pytest.raises(ValueError, match=r"\[B, 3\]"):
        net(torch.randn(4, 2), torch.zeros(4))
    with pytest.raises(ValueError, match="time must be"):
        net(torch.randn(4, 3), torch.zeros(3))
    out = net(torch.randn(4, 3), torch.tensor(0.5))  # a scalar time is shared by the batch
    assert out.shape == (4, 3)


def test_parameter_count_and_flops_of_the_mlp() -> None:
    net = make("mlp")  # dim 3, width 32, depth 2, 3 classes, 32 Fourier features
    w, d, dim = 32, 2, 3
    time_mlp, classes, cond = 2 * (w * w + w), (3 + 1) * w, w * d * w + d * w
    blocks = d * (2 * w + 2 * (w * w + w))
    expected = time_mlp + classes + cond + (dim * w + w) + blocks + 2 * w + (w * dim + dim)
    assert models.parameter_count(net) == expected
    linear = [m.weight.numel() for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert models.flops(net, (3,)) == 2 * sum(linear)  # one multiply-add per weight per sample


def test_flops_scale_with_image_area() -> None:
    conv_only = make("unet", attention_resolutions=[], mid_attention=False)
    small, large = models.flops(conv_only, (2, 8, 8)), models.flops(conv_only, (2, 16, 16))
    assert small > 0 and 3.9 < large / small < 4.0  # the time MLP is the same at every size
    attentive = make("unet", attention_resolutions=[], mid_attention=True)
    # the attention map's cost grows with the square of the pixel count
    extra_small = models.flops(attentive, (2, 8, 8)) - small
    extra_large = models.flops(attentive, (2, 16, 16)) - large
    assert extra_large / extra_small > 5.0


def test_summary_text() -> None:
    net = make("unet")
    text = models.summary(net, (2, 8, 8))
    assert text.startswith(f"unet: {models.parameter_count(net):,} parameters")
    assert "MACs" in text and "(2, 8, 8)" in text and "down" in text


def test_build_errors() -> None:
    assert {"dit", "mlp", "unet"} <= set(models.available())
    with pytest.raises(ValueError, match=r"unknown network type 'unt'.*'unet'"):
        models.build({"type": "unt"})
    with pytest.raises(ValueError, match=r"unknown unet config key 'chanels'.*'channels'"):
        models.build({"type": "unet", "chanels": 8})
    with pytest.raises(ValueError, match='"type"'):
        models.build({"channels": 8})
