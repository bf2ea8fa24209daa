"""Save a difflab :class:`~difflab.models.UNet` as a diffusers ``UNet2DModel`` folder (config.json
and diffusion_pytorch_model.safetensors, plus a scheduler_config.json when the process is given).

The two architectures are the same ADM/DDPM++ UNet (Dhariwal & Nichol 2021) when diffusers'
UNet2DModel runs with ``resnet_time_scale_shift="scale_shift"``, ``norm_eps=1e-6``, positional time
embedding and ``attn_norm_num_groups`` set: residual blocks GN-SiLU-conv, h (1 + s) + b from
SiLU(emb), GN-SiLU-dropout-conv, 1x1 skip; attention GN-q/k/v-softmax-out with residual;
strided-conv down, nearest+conv up; class rows added to the time embedding (difflab's null class is
the last row). Three things do not map, and :func:`save_unet` refuses them with the reason:

- diffusers uses one GroupNorm group count for every layer, difflab min(32, C // 4) per width C, so
  the widths must all give the same count (in practice: every width a multiple of 32 and >= 128);
- diffusers' Fourier time embedding takes log(t) with its own fixed projection: only difflab's
  positional time embedding maps;
- diffusers gives an attention layer of width C exactly C // head_dim heads, difflab at least one,
  so every attention width must be a multiple of ``head_channels``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import diffusers
import torch
from torch import Tensor, nn

from difflab.core.processes import Flow, Process, VPDiscrete
from difflab.models import UNet
from difflab.models.unet import AttentionBlock, ResBlock
from difflab.utils.weights import save_weights, write_config

__all__ = ["save_unet", "scheduler_config", "unet2d_config", "unet2d_state_dict"]

WEIGHTS, CONFIG, SCHEDULER = (
    "diffusion_pytorch_model.safetensors",
    "config.json",
    "scheduler_config.json",
)
_BETA_SCHEDULES = {
    "linear": "linear",
    "scaled_linear": "scaled_linear",
    "squaredcos_cap_v2": "squaredcos_cap_v2",
    "cosine": "squaredcos_cap_v2",
}
_PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


def _check_maps(unet: UNet) -> int:
    """The one GroupNorm group count of ``unet``, or a ValueError saying why diffusers cannot hold
    it."""
    if not isinstance(unet, UNet):
        raise ValueError(f"save_unet saves a difflab.models.UNet, got a {type(unet).__name__}")
    config = unet.config
    if config["time_embedding"] != "positional":
        raise ValueError(
            f"cannot save this UNet for diffusers: its {config['time_embedding']!r} time embedding "
            "has no UNet2DModel equivalent (diffusers' Fourier projection takes log(t) with its "
            "own fixed weights); only time_embedding='positional' maps"
        )
    groups = {
        name: (m.num_groups, m.num_channels)
        for name, m in unet.named_modules()
        if isinstance(m, nn.GroupNorm)
    }
    counts = sorted({g for g, _ in groups.values()})
    if len(counts) > 1:
        odd = next(n for n, (g, _) in groups.items() if g == counts[0])
        other = next(n for n, (g, _) in groups.items() if g == counts[-1])
        raise ValueError(
            "cannot save this UNet for diffusers: UNet2DModel uses one GroupNorm group count "
            "(norm_num_groups) for every layer, but difflab picks min(32, C // 4) groups per "
            f"width C, so this UNet has {counts} groups ({odd} has {groups[odd][0]} over "
            f"{groups[odd][1]} channels, {other} {groups[other][0]} over {groups[other][1]}); "
            "a UNet whose every width is a multiple of 32 and >= 128 (channels >= 128) maps"
        )
    head = config["head_channels"]
    attention = {n: m for n, m in unet.named_modules() if isinstance(m, AttentionBlock)}
    for name, m in attention.items():
        width = m.norm.num_channels
        if width % head:
            raise ValueError(
                f"cannot save this UNet for diffusers: attention {name} is {width} wide, not a "
                f"multiple of head_channels={head} (diffusers gives it {width // head} heads of "
                f"{head}, difflab {m.attn.heads} of {width // m.attn.heads})"
            )
    return counts[0]


def unet2d_config(unet: UNet) -> dict[str, Any]:
    """The diffusers UNet2DModel config of the same architecture (ValueError if there is none)."""
    groups = _check_maps(unet)
    c = unet.config
    widths = [c["channels"] * m for m in c["channel_mult"]]
    attn = [
        unet.config["image_size"] // 2**i in c["attention_resolutions"] for i in range(len(widths))
    ]
    return {
        "_class_name": "UNet2DModel",
        "_diffusers_version": diffusers.__version__,
        "sample_size": c["image_size"],
        "in_channels": c["in_channels"],
        "out_channels": c["out_channels"],
        "block_out_channels": widths,
        "layers_per_block": c["num_res_blocks"],
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "attention_head_dim": c["head_channels"],
        "add_attention": c["mid_attention"],
        "norm_num_groups": groups,
        "attn_norm_num_groups": groups,
        "norm_eps": 1e-6,
        "resnet_time_scale_shift": "scale_shift",
        "dropout": c["dropout"],
        "num_class_embeds": c["num_classes"] + 1 if c["num_classes"] else None,
        "time_embedding_type": "positional",
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "act_fn": "silu",
        "downsample_padding": 1,
        "downsample_type": "conv",
        "upsample_type": "conv",
        "center_input_sample": False,
        "mid_block_scale_factor": 1,
    }


def _module_pairs(unet: UNet) -> list[tuple[str, str]]:
    """(difflab module, diffusers module) name pairs, block by block."""
    c = unet.config
    levels, blocks = len(c["channel_mult"]), c["num_res_blocks"]
    pairs = [
        ("time_embed.mlp.0", "time_embedding.linear_1"),
        ("time_embed.mlp.2", "time_embedding.linear_2"),
        ("class_embed.table", "class_embedding"),
        ("input", "conv_in"),
        ("out.0", "conv_norm_out"),
        ("out.2", "conv_out"),
    ]

    def stage(ours: str, theirs: str, i: int) -> int:
        """A residual block [+ attention] at ``ours.layers``; returns the next layer index."""
        pairs.append((f"{ours}.layers.0", f"{theirs}.resnets.{i}"))
        layers = unet.get_submodule(ours).layers
        if len(layers) > 1 and isinstance(layers[1], AttentionBlock):
            pairs.append((f"{ours}.layers.1", f"{theirs}.attentions.{i}"))
            return 2
        return 1

    j = 0
    for level in range(levels):
        for i in range(blocks):
            stage(f"down.{j}", f"down_blocks.{level}", i)
            j += 1
        if level < levels - 1:
            pairs.append((f"down.{j}.layers.0", f"down_blocks.{level}.downsamplers.0"))
            j += 1
    pairs.append(("mid.layers.0", "mid_block.resnets.0"))
    if c["mid_attention"]:
        pairs.append(("mid.layers.1", "mid_block.attentions.0"))
    pairs.append((f"mid.layers.{1 + c['mid_attention']}", "mid_block.resnets.1"))
    for u, level in enumerate(reversed(range(levels))):
        for i in range(blocks + 1):
            j = u * (blocks + 1) + i
            k = stage(f"up.{j}", f"up_blocks.{u}", i)
            if level > 0 and i == blocks:
                pairs.append((f"up.{j}.layers.{k}", f"up_blocks.{u}.upsamplers.0"))
    return pairs


_RES = {  # ResBlock -> ResnetBlock2D layer names
    "norm1": "norm1",
    "conv1": "conv1",
    "emb": "time_emb_proj",
    "norm2": "norm2",
    "conv2": "conv2",
    "skip": "conv_shortcut",
}


def unet2d_state_dict(unet: UNet) -> dict[str, Tensor]:
    """``unet``'s weights under UNet2DModel's names (fused qkv split into to_q, to_k, to_v)."""
    _check_maps(unet)
    state: dict[str, Tensor] = {}
    for ours, theirs in _module_pairs(unet):
        module = unet.get_submodule(ours)
        if isinstance(module, ResBlock):
            for a, b in _RES.items():
                for p, value in getattr(module, a).named_parameters():
                    state[f"{theirs}.{b}.{p}"] = value
        elif isinstance(module, AttentionBlock):
            for p in ("weight", "bias"):
                q, k, v = getattr(module.attn.qkv, p).chunk(3)
                state |= {f"{theirs}.to_q.{p}": q, f"{theirs}.to_k.{p}": k, f"{theirs}.to_v.{p}": v}
                state[f"{theirs}.to_out.0.{p}"] = getattr(module.attn.proj, p)
                state[f"{theirs}.group_norm.{p}"] = getattr(module.norm, p)
        else:
            for p, value in module.named_parameters():
                state[f"{theirs}.{p}"] = value
    return {k: v.detach().float().contiguous() for k, v in state.items()}


def scheduler_config(
    process: Process, prediction: str = "eps", time_input: str = "t"
) -> dict[str, Any]:
    """The diffusers scheduler config of a difflab process: DDPMScheduler for a DDPM table whose
    network sees the integer timestep, FlowMatchEulerDiscreteScheduler for flow matching with
    velocity prediction at timestep 1000 t; a ValueError for anything diffusers cannot describe."""
    if isinstance(process, VPDiscrete) and time_input == "t" and prediction in _PREDICTION_TYPES:
        config: dict[str, Any] = {
            "_class_name": "DDPMScheduler",
            "_diffusers_version": diffusers.__version__,
            "num_train_timesteps": process.num_train_timesteps,
            "prediction_type": _PREDICTION_TYPES[prediction],
            "rescale_betas_zero_snr": False,
            "clip_sample": False,
        }
        if process.schedule in _BETA_SCHEDULES:
            return config | {
                "beta_schedule": _BETA_SCHEDULES[process.schedule],
                "beta_start": process.beta_start,
                "beta_end": process.beta_end,
                "rescale_betas_zero_snr": process.rescale_zero_terminal_snr,
            }
        table = process.alphas_cumprod
        betas = 1 - table / torch.cat([table.new_ones(1), table[:-1]])
        return config | {"trained_betas": betas.tolist()}
    if isinstance(process, Flow) and prediction == "velocity" and time_input == "t1000":
        return {
            "_class_name": "FlowMatchEulerDiscreteScheduler",
            "_diffusers_version": diffusers.__version__,
            "num_train_timesteps": 1000,
            "shift": process.shift,
        }
    raise ValueError(
        f"diffusers has no scheduler for process {process!r} with prediction {prediction!r} and "
        f"time input {time_input!r}: it describes DDPM tables (vp_discrete, prediction eps / v / "
        "x0, time input 't') and flow matching (flow, prediction 'velocity', time input 't1000')"
    )


def save_unet(
    unet: UNet,
    folder: str | os.PathLike[str],
    *,
    process: Process | None = None,
    prediction: str = "eps",
    time_input: str = "t",
) -> Path:
    """Write ``unet`` as a diffusers UNet2DModel folder that ``UNet2DModel.from_pretrained(folder)``
    loads, and with ``process`` also its scheduler_config.json (so
    ``difflab.interop.diffusers.load`` rebuilds the denoiser). Each file is written atomically;
    nothing is written if it cannot map."""
    config = unet2d_config(unet)
    state = unet2d_state_dict(unet)
    scheduler = None if process is None else scheduler_config(process, prediction, time_input)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(folder / WEIGHTS, state, metadata={"format": "pt"})
    write_config(folder / CONFIG, config)
    if scheduler is not None:
        write_config(folder / SCHEDULER, scheduler)
    return folder
