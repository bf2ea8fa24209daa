"""LoRA: trainable low-rank adapters on a network's Linear and Conv2d layers (Hu et al. 2021).

A frozen layer W gains factors A [r, in] and B [out, r] and computes W x + (alpha / r) B A x, with A
Kaiming-uniform and B = 0, so the adapted network starts equal to its base. On a Conv2d, A is a
convolution with the layer's kernel, stride, padding and dilation into r channels and B a 1x1
convolution back, so the update B A reshaped is a kernel of W's shape (as loralib does).

    names = add_lora(net, rank=4)                   # DEFAULT_TARGETS[net.type], or targets=[...]
    optimizer = torch.optim.Adam(freeze_base(net))  # only A and B train
    save_adapter("runs/ink", net, base="mnist")     # a small "adapter" model folder
    merge_lora(net)                                 # W <- W + (alpha / r) B A: plain layers again

A layer is adapted in place (its class becomes :class:`LoRALinear` or :class:`LoRAConv2d`), so it
keeps its name, parameters and hooks: the network's state dict holds the base's keys unchanged plus
``<layer>.lora_A`` and ``<layer>.lora_B``. Code that reads a layer's ``weight`` directly rather than
calling the layer (the identity map of perturbed-attention guidance reads ``qkv.weight``) sees the
base weight until :func:`merge_lora`.

An adapter folder (type "adapter" of :mod:`difflab.utils.folder`) holds only the LoRA tensors and a
config naming its base model and the base's :func:`weights_digest`; :func:`load_adapter` refuses an
adapter made for other base weights.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difflab.models.registry import Network
from difflab.utils.folder import (
    CONFIG,
    WEIGHTS,
    read_folder_config,
    read_folder_weights,
    save_folder,
)
from difflab.utils.names import unknown_name
from difflab.utils.weights import check_fits

__all__ = [
    "DEFAULT_TARGETS",
    "LoRAConv2d",
    "LoRALayer",
    "LoRALinear",
    "add_lora",
    "base_state_dict",
    "freeze_base",
    "load_adapter",
    "load_lora",
    "lora_disabled",
    "lora_layers",
    "lora_parameters",
    "lora_state_dict",
    "merge_lora",
    "read_adapter_config",
    "remove_lora",
    "save_adapter",
    "weights_digest",
]

TYPE = "adapter"
LORA_KEYS = ("lora_A", "lora_B")
# module-name patterns (fnmatch) adapted by default, per network type
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    # every block's attention (qkv, output projection) and MLP linears; not adaLN, patchify, output
    "dit": ("blocks.*.attn.qkv", "blocks.*.attn.proj", "blocks.*.mlp.0", "blocks.*.mlp.2"),
    # the attention blocks' qkv and projection and both 3x3 convs of every residual block
    "unet": ("*.attn.qkv", "*.attn.proj", "*.conv1", "*.conv2"),
    # both linears of every residual block
    "mlp": ("blocks.*.fc1", "blocks.*.fc2"),
}


class LoRALayer:
    """The LoRA factors of an adapted layer: ``lora_A`` [r, in, ...], ``lora_B`` [out, r, ...],
    ``alpha``; ``lora_enabled`` False computes the base layer alone (:func:`lora_disabled`)."""

    weight: nn.Parameter
    lora_A: nn.Parameter
    lora_B: nn.Parameter
    alpha: float
    lora_enabled: bool

    @property
    def rank(self) -> int:
        return self.lora_A.shape[0]

    @property
    def scale(self) -> float:
        """alpha / r, the factor of B A (Hu et al. 2021, sec. 4.1)."""
        return self.alpha / self.rank

    def delta_weight(self) -> Tensor:
        """(alpha / r) B A, shaped like the layer's weight."""
        flat = self.lora_B.flatten(1) @ self.lora_A.flatten(1)
        return self.scale * flat.view_as(self.weight)


class LoRALinear(LoRALayer, nn.Linear):
    """y = W x + b + (alpha / r) B A x (Hu et al. 2021, eq. 3)."""

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(x, self.weight, self.bias)
        if not self.lora_enabled:
            return y
        return y + self.scale * F.linear(F.linear(x, self.lora_A), self.lora_B)


class LoRAConv2d(LoRALayer, nn.Conv2d):
    """y = W * x + b + (alpha / r) B (A * x): A the layer's convolution into r channels, B a 1x1
    convolution (Hu et al. 2021, on convolutions as loralib)."""

    def forward(self, x: Tensor) -> Tensor:
        y = self._conv_forward(x, self.weight, self.bias)
        if not self.lora_enabled:
            return y
        return y + self.scale * F.conv2d(self._conv_forward(x, self.lora_A, None), self.lora_B)


# plain layer class -> its adapted class
_ADAPTED: dict[type[nn.Module], type[nn.Module]] = {nn.Linear: LoRALinear, nn.Conv2d: LoRAConv2d}
_BASE = {lora: plain for plain, lora in _ADAPTED.items()}


def lora_layers(net: nn.Module) -> dict[str, LoRALayer]:
    """Every adapted layer of ``net`` by its module name, in module order."""
    return {name: m for name, m in net.named_modules() if isinstance(m, LoRALayer)}


def _check_rank(rank: int, alpha: float | None) -> float:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be an integer >= 1, got {rank!r}")
    alpha = float(rank if alpha is None else alpha)
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"LoRA alpha must be a finite number > 0, got {alpha!r}")
    return alpha


def _targets(net: nn.Module, targets: str | Iterable[str] | None) -> list[str]:
    if targets is None:
        kind = net.type if isinstance(net, Network) else None
        if kind not in DEFAULT_TARGETS:
            raise ValueError(
                f"no default LoRA targets for a {kind or type(net).__name__} network: pass "
                f"targets= (module-name patterns such as 'blocks.*.attn.qkv'); defaults exist "
                f"for {', '.join(sorted(DEFAULT_TARGETS))}"
            )
        return list(DEFAULT_TARGETS[kind])
    patterns = [targets] if isinstance(targets, str) else list(targets)
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"LoRA targets must be module-name patterns (strings), got {targets!r}")
    return patterns


def add_lora(
    net: nn.Module,
    rank: int,
    alpha: float | None = None,
    targets: str | Iterable[str] | None = None,
    generator: torch.Generator | None = None,
) -> list[str]:
    """Adapt the Linear and Conv2d layers of ``net`` whose module names match ``targets`` (fnmatch
    patterns; default :data:`DEFAULT_TARGETS` of the network's type) in place: W x + (alpha / r)
    B A x with A Kaiming-uniform, B = 0, alpha = r unless given (Hu et al. 2021). Returns the adapted
    names; nothing changes when a pattern matches no layer or a layer cannot be adapted."""
    alpha = _check_rank(rank, alpha)
    patterns = _targets(net, targets)
    layers = {
        name: m
        for name, m in net.named_modules()
        if type(m) in _ADAPTED or isinstance(m, LoRALayer)
    }
    for pattern in patterns:
        if not any(fnmatchcase(name, pattern) for name in layers):
            raise unknown_name(
                f"LoRA target (a Linear or Conv2d layer of {type(net).__name__})", pattern, layers
            )
    chosen = [name for name in layers if any(fnmatchcase(name, p) for p in patterns)]
    for name in chosen:
        layer = layers[name]
        if isinstance(layer, LoRALayer):
            raise ValueError(
                f"layer {name} already has a LoRA adapter: merge_lora or remove_lora it"
            )
        if isinstance(layer, nn.Conv2d) and layer.groups != 1:
            raise ValueError(
                f"layer {name} is a grouped convolution ({layer.groups} groups): LoRA adapts "
                "ungrouped ones only"
            )
    for name in chosen:
        _adapt(layers[name], rank, alpha, generator)
    return chosen


def _adapt(layer: nn.Module, rank: int, alpha: float, generator: torch.Generator | None) -> None:
    weight = layer.weight
    out, fan_in, *kernel = weight.shape
    a = torch.empty(rank, fan_in, *kernel, dtype=weight.dtype, device=weight.device)
    nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)  # nn.Linear's own init
    b = torch.zeros(out, rank, *[1] * len(kernel), dtype=weight.dtype, device=weight.device)
    layer.__class__ = _ADAPTED[type(layer)]
    layer.lora_A, layer.lora_B = nn.Parameter(a), nn.Parameter(b)
    layer.alpha, layer.lora_enabled = alpha, True


def _strip(layer: LoRALayer) -> None:
    """The plain layer again, its factors dropped."""
    for key in (*LORA_KEYS, "alpha", "lora_enabled"):
        delattr(layer, key)
    layer.__class__ = _BASE[type(layer)]


def merge_lora(net: nn.Module) -> list[str]:
    """Fold every adapter into its layer, W <- W + (alpha / r) B A, and make the layers plain again
    (Hu et al. 2021, sec. 4.1: no inference latency); returns the merged names."""
    layers = lora_layers(net)
    with torch.no_grad():
        for layer in layers.values():
            layer.weight.add_(layer.delta_weight())
            _strip(layer)
    return list(layers)


def remove_lora(net: nn.Module) -> list[str]:
    """Drop every adapter unmerged: ``net`` is its base network again; returns the names."""
    layers = lora_layers(net)
    for layer in layers.values():
        _strip(layer)
    return list(layers)


@contextmanager
def lora_disabled(net: nn.Module) -> Iterator[None]:
    """Within the block every adapted layer computes its base layer alone, so ``net`` is the base
    model (the reference model of KL-regularized and preference fine-tuning); restored after."""
    layers = lora_layers(net)
    before = {name: layer.lora_enabled for name, layer in layers.items()}
    try:
        for layer in layers.values():
            layer.lora_enabled = False
        yield
    finally:
        for name, layer in layers.items():
            if isinstance(layer, LoRALayer):  # not merged or removed within the block
                layer.lora_enabled = before[name]


def lora_parameters(net: nn.Module) -> list[nn.Parameter]:
    """The LoRA factors A and B of every adapted layer, in module order."""
    return [p for layer in lora_layers(net).values() for p in (layer.lora_A, layer.lora_B)]


def freeze_base(net: nn.Module) -> list[nn.Parameter]:
    """Freeze every parameter of ``net`` but the LoRA factors; returns those (the ones to train)."""
    net.requires_grad_(False)
    trainable = lora_parameters(net)
    for p in trainable:
        p.requires_grad_(True)
    return trainable


def _is_lora_key(name: str) -> bool:
    return name.rpartition(".")[2] in LORA_KEYS


def lora_state_dict(net: nn.Module) -> dict[str, Tensor]:
    """``<layer>.lora_A`` and ``<layer>.lora_B`` of every adapted layer (detached)."""
    return {k: v for k, v in net.state_dict().items() if _is_lora_key(k)}


def base_state_dict(net: nn.Module) -> dict[str, Tensor]:
    """The state dict of ``net`` without its LoRA factors: the base network's, same keys."""
    return {k: v for k, v in net.state_dict().items() if not _is_lora_key(k)}


def load_lora(net: nn.Module, tensors: Mapping[str, Tensor], source: str = "LoRA tensors") -> None:
    """Copy ``tensors`` (as :func:`lora_state_dict` gives them) into the adapted layers of ``net``:
    every factor, each of its shape; a ValueError naming ``source`` otherwise, ``net`` unchanged."""
    other = [k for k in tensors if not _is_lora_key(k)]
    if other:
        raise ValueError(
            f"{source} holds tensors that are not LoRA factors: {', '.join(other[:5])}"
        )
    check_fits(net, base_state_dict(net) | dict(tensors), source)
    params = dict(net.named_parameters())
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)


def weights_digest(source: nn.Module | Mapping[str, Tensor]) -> str:
    """ "sha256:<hex>" over the sorted names, dtypes, shapes and bytes of a state dict (float tensors
    as float32, as model folders store them); of a network, its :func:`base_state_dict`, so the
    digest of a base is the same before and after adding adapters, and equals that of its folder's
    weights."""
    tensors = base_state_dict(source) if isinstance(source, nn.Module) else source
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach()
        t = (t.float() if t.is_floating_point() else t).cpu().contiguous()
        digest.update(f"{name} {t.dtype} {list(t.shape)}\n".encode())
        digest.update(t.numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def _short(digest: str) -> str:
    return digest[:19]  # "sha256:" and 12 hex digits


_RESERVED = {"type", "format", "version", "adapter", "rank", "alpha", "targets", "base"}


def save_adapter(
    folder: str | os.PathLike[str],
    net: nn.Module,
    base: str,
    base_digest: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> Path:
    """Write the adapters of ``net`` as a model folder of type "adapter": its LoRA tensors only and
    a config with rank, alpha, targets (the adapted layers), ``base`` {"model": the base model's name
    or path, "digest": :func:`weights_digest` of the base}, and ``config``'s extra sections (a
    training record). ``base_digest``, when given, must be the digest of ``net``'s base weights
    (else they changed in training: save the full model)."""
    layers = lora_layers(net)
    if not layers:
        raise ValueError(f"{type(net).__name__} has no LoRA adapters to save (add_lora first)")
    ranks = sorted({layer.rank for layer in layers.values()})
    alphas = sorted({layer.alpha for layer in layers.values()})
    if len(ranks) > 1 or len(alphas) > 1:
        raise ValueError(
            f"an adapter folder holds one rank and alpha, these layers have ranks {ranks} and "
            f"alphas {alphas}"
        )
    digest = weights_digest(net)
    if base_digest is not None and base_digest != digest:
        raise ValueError(
            f"the network's base weights ({_short(digest)}...) are not the base {base!r} "
            f"({_short(base_digest)}...): they changed in training (freeze_base) or belong to "
            "another model; save the full model instead"
        )
    clash = sorted(_RESERVED & set(config or {}))
    if clash:
        raise ValueError(f"extra config sections may not replace the adapter's: {', '.join(clash)}")
    adapter = {
        "type": TYPE,
        "adapter": "lora",
        "rank": ranks[0],
        "alpha": alphas[0],
        "targets": list(layers),
        "base": {"model": str(base), "digest": digest},
        **dict(config or {}),
    }
    return save_folder(folder, adapter, lora_state_dict(net))


def read_adapter_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """``folder/config.json`` of an adapter folder, checked: rank, alpha, targets and the base's
    model and digest."""
    config = read_folder_config(folder, TYPE)
    where = Path(folder) / CONFIG
    base, targets = config.get("base"), config.get("targets")
    if config.get("adapter") != "lora":
        raise ValueError(
            f"{where}: unknown adapter kind {config.get('adapter')!r}, expected 'lora'"
        )
    try:
        _check_rank(config.get("rank"), config.get("alpha"))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None
    if not (isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets)):
        raise ValueError(f"{where}: targets must be a list of layer names, got {targets!r}")
    if not (
        isinstance(base, dict) and all(isinstance(base.get(k), str) for k in ("model", "digest"))
    ):
        raise ValueError(f"{where}: base must hold the base model's 'model' and 'digest'")
    return config


def load_adapter(
    folder: str | os.PathLike[str], net: nn.Module, base_digest: str | None = None
) -> list[str]:
    """Add the adapter saved in ``folder`` to ``net`` (or load it into ``net``'s adapters of the same
    layers) after checking that it was made for these base weights: ``base_digest``, by default
    :func:`weights_digest` (net). Returns the adapted names; on any error ``net`` is unchanged."""
    config = read_adapter_config(folder)
    expected = config["base"]["digest"]
    found = weights_digest(net) if base_digest is None else base_digest
    if found != expected:
        raise ValueError(
            f"{folder} is an adapter for base model {config['base']['model']!r} "
            f"({_short(expected)}...), not for these weights ({_short(found)}...)"
        )
    tensors = read_folder_weights(folder)
    source, names = str(Path(folder) / WEIGHTS), config["targets"]
    if lora_layers(net):
        if list(lora_layers(net)) != names:
            raise ValueError(f"{folder} adapts other layers than the network's LoRA layers")
        load_lora(net, tensors, source)
        return names
    add_lora(net, config["rank"], config["alpha"], targets=names)
    try:
        load_lora(net, tensors, source)
    except ValueError:
        remove_lora(net)
        raise
    return names
