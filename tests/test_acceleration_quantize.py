"""int8 post-training quantization (torch.ao.quantization, x86 backend) calibrated along sampling
trajectories: the quantized network stays within a measured error of the float one."""

import pytest
import torch

from difflab import models, schedules
from difflab.acceleration import along_trajectories, quantize, with_network
from difflab.core.parameterization import EDMPrecond

# relative RMS error of the network output over inputs from fresh trajectories at every noise level
# of the grid, on this random network: measured 0.060-0.063 with static int8 convolutions (7-bit
# activations: the x86 backend's reduce_range), 0.0051 with dynamic int8 linear layers alone
STATIC_BOUND, DYNAMIC_BOUND = 0.09, 0.01


def _randomized(net: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.15)
    return net.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    config = {"type": "unet", "image_size": 8, "channels": 16, "channel_mult": [1, 2]}
    config |= {"num_res_blocks": 1, "attention_resolutions": [4], "head_channels": 16}
    return _randomized(models.build(config | {"num_classes": 3, "time_embedding": "fourier"}))


def _inputs(net: torch.nn.Module, sigmas: torch.Tensor, seed: int) -> list[tuple]:
    """(x_t, time, labels) the network sees along fresh Euler trajectories of the float model."""
    seen = []

    def record(module, args, out):
        seen.append(tuple(a.clone() for a in args))

    hook = net.register_forward_hook(record)
    try:
        along_trajectories(
            EDMPrecond, (1, 8, 8), sigmas, n=8, labels=torch.arange(8) % 3, seed=seed
        )(net)
    finally:
        hook.remove()
    return seen


def _relative_error(q: torch.nn.Module, net: torch.nn.Module, inputs: list[tuple]) -> float:
    with torch.no_grad():
        ref = torch.cat([net(*a).flatten() for a in inputs])
        out = torch.cat([q(*a).flatten() for a in inputs])
    return float((out - ref).norm() / ref.norm())


@pytest.mark.parametrize(
    ("conv", "linear", "bound"),
    [("static", "dynamic", STATIC_BOUND), ("none", "dynamic", DYNAMIC_BOUND)],
)
def test_int8_network_stays_within_its_bound(unet, conv, linear, bound):
    sigmas = schedules.get("karras")(8, 0.002, 80.0)
    calibrate = along_trajectories(EDMPrecond, (1, 8, 8), sigmas, n=16, labels=torch.arange(16) % 3)
    q = quantize(unet, calibrate if conv == "static" else None, conv=conv, linear=linear)
    kinds = {f"{type(m).__module__}.{type(m).__name__}" for m in q.modules()}
    assert "torch.ao.nn.quantized.dynamic.modules.linear.Linear" in kinds
    assert ("torch.ao.nn.quantized.modules.conv.Conv2d" in kinds) == (conv == "static")
    error = _relative_error(q, unet, _inputs(unet, sigmas, seed=7))
    assert 1e-4 < error < bound  # it quantized something, and not too much
    # the float network is untouched and the quantized one runs in a denoiser
    assert all(
        type(m).__module__.startswith("torch.nn") for m in unet.modules() if not list(m.children())
    )
    x = torch.randn(2, 1, 8, 8) * 10
    out = with_network(EDMPrecond(unet), q)(x, torch.tensor(10.0), labels=torch.tensor([0, 1]))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_static_layers_need_calibration(unet):
    with pytest.raises(ValueError, match="calibrate"):
        quantize(unet, None, conv="static")
    with pytest.raises(ValueError, match="linear quantization"):
        quantize(unet, None, conv="none", linear="int4")
