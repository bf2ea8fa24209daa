"""Multi-head self-attention, the one hook point that attention-based guidance switches.

Perturbed-attention guidance (Ahn et al. 2024) replaces the attention map of chosen layers by the
identity, so each token attends only to itself and the layer outputs its projected value. Every
network in difflab.models builds its attention from :class:`Attention`; :func:`identity_attention`
switches any of them, and :func:`perturbed_attention` is the guided denoiser (the guidance itself,
:func:`difflab.guidance.perturbed`, takes any denoiser and any perturbation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difflab.core.tensors import check_name
from difflab.guidance.degraded import perturbed
from difflab.guidance.rules import Rule

__all__ = [
    "Attention",
    "CrossAttention",
    "attention_layers",
    "identity_attention",
    "perturbed_attention",
    "rotate",
]


def rotate(x: Tensor, base: float = 10000.0) -> Tensor:
    """Rotary position embedding of x [..., N, D]: pairs (x_i, x_{i+D/2}) of token n rotated by the
    angle n base^(-2i/D), so that q.k depends on positions only through their offset (RoPE, Su et
    al. 2021)."""
    n, d = x.shape[-2], x.shape[-1]
    freq = base ** (-torch.arange(0, d // 2, dtype=torch.float32, device=x.device) * 2 / d)
    angle = torch.arange(n, dtype=torch.float32, device=x.device)[:, None] * freq
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    """softmax(Q K^T / sqrt(d)) V W_o over tokens [B, N, C] (Vaswani et al. 2017); ``causal``: token
    i attends to tokens j <= i only (autoregressive models); ``rotary``: q and k carry rotary
    position embeddings (:func:`rotate`).

    With ``identity = True`` the attention map is the identity: the output is V W_o (Ahn et al. 2024).
    """

    def __init__(self, dim: int, heads: int, causal: bool = False, rotary: bool = False) -> None:
        super().__init__()
        if dim % heads or (rotary and (dim // heads) % 2):
            raise ValueError(
                f"attention width {dim} is not divisible by {heads} heads"
                + (" of even width (rotary embeddings)" if rotary else "")
            )
        self.heads, self.causal, self.rotary = heads, causal, rotary
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.identity = False

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        if self.identity:
            return self.proj(F.linear(x, self.qkv.weight[2 * c :], self.qkv.bias[2 * c :]))
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if self.rotary:
            q, k = rotate(q), rotate(k)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class CrossAttention(nn.Module):
    """softmax(Q K^T / sqrt(d)) V W_o with queries from tokens x [B, N, C] and keys and values from a
    context sequence [B, M, C_c] (Vaswani et al. 2017; Rombach et al. 2022). Not an
    :class:`Attention`: perturbed-attention guidance switches self-attention only."""

    def __init__(self, dim: int, context_dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q, self.kv = nn.Linear(dim, dim), nn.Linear(context_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.heads, c // self.heads).transpose(1, 2)
        kv = self.kv(context).reshape(b, context.shape[1], 2, self.heads, c // self.heads)
        k, v = kv.permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


def attention_layers(net: nn.Module) -> dict[str, Attention]:
    """Every attention layer of ``net`` by its module name, in forward order."""
    return {name: m for name, m in net.named_modules() if isinstance(m, Attention)}


@contextmanager
def identity_attention(net: nn.Module, names: Iterable[str] | None = None) -> Iterator[None]:
    """Within the block, the named attention layers (all when ``names`` is None) use the identity
    attention map of perturbed-attention guidance (Ahn et al. 2024); the flags are restored after."""
    layers = attention_layers(net)
    chosen = list(layers) if names is None else list(names)
    for name in chosen:
        check_name("attention layer", name, layers)
    before = {name: layers[name].identity for name in chosen}
    try:
        for name in chosen:
            layers[name].identity = True
        yield
    finally:
        for name, flag in before.items():
            layers[name].identity = flag


def perturbed_attention(
    denoiser: Callable[..., Tensor],
    scale: float | Rule,
    layers: Iterable[str] | None = None,
    network: nn.Module | None = None,
    sigma_interval: tuple[float, float] | None = None,
) -> Callable[..., Tensor]:
    """Perturbed-attention guidance (Ahn et al. 2024): D_w = D_hat + w (D - D_hat), D_hat with the
    identity attention map (each token attends to itself) in ``layers`` of ``network`` (default: every
    attention layer of the denoiser, which must then be an nn.Module, as difflab's UNet and DiT
    denoisers are). The paper's scale s is w - 1. Layer names are those of
    :func:`attention_layers` (network). :func:`difflab.guidance.perturbed` with
    :func:`identity_attention` as the perturbation."""
    network = network if network is not None else denoiser
    if not isinstance(network, nn.Module):
        raise ValueError(
            "perturbed-attention guidance needs the network whose attention it switches: pass "
            "network= (an nn.Module) when the denoiser is a plain function"
        )
    available = attention_layers(network)
    if not available:
        raise ValueError(f"{type(network).__name__} has no attention layers to perturb")
    chosen = list(available) if layers is None else list(layers)
    with identity_attention(network, chosen):  # checks every name now, not at sampling time
        pass
    return perturbed(denoiser, lambda: identity_attention(network, chosen), scale, sigma_interval)
