"""Weight and config files without pickle: safetensors for tensors, JSON/TOML for configs.

Every file is written atomically; every file read is checked first, so a truncated or corrupt file
raises a ValueError naming the file and what is wrong instead of a deep stack trace.
"""

from __future__ import annotations

import json
import os
import pickle
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import Tensor, nn

from difflab.utils.files import atomic_path, atomic_write_bytes
from difflab.utils.names import unknown_name

__all__ = [
    "PICKLE_SUFFIXES",
    "check_fits",
    "check_no_pickles",
    "convert_pickle",
    "load_state_dict_strict",
    "load_weights",
    "read_config",
    "save_weights",
    "weights_metadata",
    "write_config",
]

PathLike = str | os.PathLike[str]

# File suffixes of pickled PyTorch weights (torch.save, Lightning, plain pickle).
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
# Keys under which training scripts commonly nest a state dict.
STATE_DICT_KEYS = ("state_dict", "model", "ema")

# Bytes per element of the safetensors dtypes, to check each tensor's byte range against its shape.
_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
    "U16": 2,
    "I16": 2,
    "F16": 2,
    "BF16": 2,
    "U32": 4,
    "I32": 4,
    "F32": 4,
    "U64": 8,
    "I64": 8,
    "F64": 8,
    "C64": 8,
}
_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header


def _names(names: list[str], first: int = 5) -> str:
    """The first few names, then how many more."""
    shown = ", ".join(names[:first])
    return shown + (f" and {len(names) - first} more" if len(names) > first else "")


def _packed(tensors: Mapping[str, Tensor], path: Path) -> dict[str, Tensor]:
    """Contiguous CPU copies safetensors can write: tensors sharing memory (tied weights) are cloned."""
    bad = [
        str(k) for k, v in tensors.items() if not isinstance(k, str) or not isinstance(v, Tensor)
    ]
    if bad:
        raise ValueError(f"cannot save {path}: entries {_names(bad)} are not str -> tensor")
    sparse = [k for k, v in tensors.items() if v.layout != torch.strided]
    if sparse:
        raise ValueError(f"cannot save {path}: {_names(sparse)} are sparse; call .to_dense() first")
    out, seen = {}, set()
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr and ptr in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def save_weights(
    path: PathLike, tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``tensors`` (name -> tensor) and string ``metadata`` to a safetensors file, atomically."""
    path = Path(path)
    if metadata is not None and not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ValueError(f"cannot save {path}: metadata must map strings to strings")
    packed = _packed(tensors, path)
    with atomic_path(path) as tmp:
        safetensors.torch.save_file(packed, tmp, metadata=dict(metadata) if metadata else None)
    return path


def _check_entry(path: Path, name: str, info: Any, data_bytes: int) -> None:
    """One tensor entry of a safetensors header: dtype, shape and a byte range inside the data."""
    if not isinstance(info, dict):
        raise ValueError(f"{path} has a corrupt header: entry {name!r} is not a JSON object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not (isinstance(shape, list) and all(isinstance(n, int) and n >= 0 for n in shape)):
        raise ValueError(f"{path} has a corrupt header: tensor {name!r} has shape {shape!r}")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(n, int) for n in offsets)
        and 0 <= offsets[0] <= offsets[1]
    ):
        raise ValueError(f"{path} has a corrupt header: tensor {name!r} has offsets {offsets!r}")
    begin, end = offsets
    if end > data_bytes:
        raise ValueError(
            f"{path} is truncated or corrupt: tensor {name!r} lies at data bytes {begin}-{end} "
            f"but the file holds only {data_bytes} bytes of data"
        )
    itemsize = _DTYPE_BYTES.get(dtype)
    numel = int(torch.Size(shape).numel())
    if itemsize is not None and end - begin != numel * itemsize:
        raise ValueError(
            f"{path} has a corrupt header: tensor {name!r} ({dtype}, shape {shape}) needs "
            f"{numel * itemsize} bytes but spans {end - begin}"
        )


def _read_header(path: PathLike) -> dict[str, Any]:
    """The JSON header of a safetensors file, checked against the file's size."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a safetensors weights file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path} is not a safetensors file: it has only {size} bytes")
        n = int.from_bytes(head, "little")
        if n > size - 8:
            raise ValueError(
                f"{path} is truncated or not a safetensors file: its header length field says "
                f"{n} bytes but only {size - 8} follow"
            )
        if n > _MAX_HEADER:
            raise ValueError(f"{path} is not a safetensors file: a {n}-byte header is too large")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise ValueError(
            f"{path} is not a safetensors file: its header is not valid JSON ({e})"
        ) from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a safetensors file: its header is not a JSON object")
    metadata = header.get("__metadata__", {})
    if not (
        isinstance(metadata, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ):
        raise ValueError(f"{path} has a corrupt header: __metadata__ must map strings to strings")
    for name, info in header.items():
        if name != "__metadata__":
            _check_entry(path, name, info, size - 8 - n)
    return header


def weights_metadata(path: PathLike) -> dict[str, str]:
    """The string metadata stored in a safetensors file's header (empty when there is none)."""
    return dict(_read_header(path).get("__metadata__", {}))


def load_weights(path: PathLike, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """name -> tensor from a safetensors file, after checking the file is whole and well formed."""
    _read_header(path)
    try:
        return safetensors.torch.load_file(path, device=str(device))
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise ValueError(f"{path} could not be read as a safetensors file: {e}") from None


def _shape(t: Tensor) -> str:
    return str(list(t.shape))


def check_fits(module: nn.Module, tensors: Mapping[str, Tensor], source: str = "weights") -> None:
    """Raise one ValueError listing every missing key, unexpected key, shape mismatch and dtype-kind
    mismatch between ``tensors`` and ``module``'s state dict (a module on the meta device works)."""
    expected = module.state_dict()
    bad = [str(k) for k, v in tensors.items() if not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"{source}: entries {_names(bad)} are not tensors")
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    common = [k for k in expected if k in tensors]
    shapes = [
        f"{k} ({_shape(tensors[k])} in {source}, {_shape(expected[k])} in the model)"
        for k in common
        if tensors[k].shape != expected[k].shape
    ]
    kinds = [
        f"{k} ({tensors[k].dtype} in {source}, {expected[k].dtype} in the model)"
        for k in common
        if tensors[k].is_floating_point() != expected[k].is_floating_point()
        or tensors[k].is_complex() != expected[k].is_complex()
    ]
    problems = [
        f"{len(names)} {what}: {_names(names)}"
        for what, names in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", shapes),
            ("dtype kind mismatches", kinds),
        )
        if names
    ]
    if problems:
        raise ValueError(f"{source} does not fit {type(module).__name__}: " + "; ".join(problems))


def load_state_dict_strict(
    module: nn.Module, tensors: Mapping[str, Tensor], source: str = "weights"
) -> nn.Module:
    """Load ``tensors`` into ``module`` after :func:`check_fits` (dtypes are converted)."""
    check_fits(module, tensors, source)
    module.load_state_dict(dict(tensors), strict=True)  # copy_ converts dtype and device
    return module


def read_config(path: PathLike) -> dict[str, Any]:
    """A config dict from a .json or .toml file; syntax errors name the file and the line."""
    path = Path(path)
    if path.suffix not in (".json", ".toml"):
        raise ValueError(f"config file {path} must end in .json or .toml")
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"config file {path} is not UTF-8 text ({e.reason})") from None
    if path.suffix == ".json":
        try:
            config = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"config file {path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}"
            ) from None
    else:
        try:
            config = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:  # its message ends "(at line L, column C)"
            raise ValueError(f"config file {path} is not valid TOML: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(
            f"config file {path} must hold a table of settings at the top, got a {type(config).__name__}"
        )
    return config


def _check_json(value: Any, where: str) -> None:
    """Raise a ValueError naming the first entry JSON cannot store."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"config key {k!r} in {where} is not a string")
            _check_json(v, f"{where}.{k}" if where else k)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_json(v, f"{where}[{i}]")
    elif not isinstance(value, str | int | float | bool | type(None)):
        raise ValueError(
            f"config entry {where} is a {type(value).__name__}, which JSON cannot store"
        )


def write_config(path: PathLike, config: Mapping[str, Any]) -> Path:
    """Write ``config`` as JSON (sorted keys, indent 2), atomically."""
    path = Path(path)
    if path.suffix != ".json":
        raise ValueError(f"write_config writes JSON: give a .json name, not {path.name}")
    if not isinstance(config, Mapping):
        raise ValueError(f"config for {path} must be a dict, got a {type(config).__name__}")
    config = dict(config)
    _check_json(config, "")
    atomic_write_bytes(path, (json.dumps(config, sort_keys=True, indent=2) + "\n").encode())
    return path


def check_no_pickles(model_dir: PathLike) -> None:
    """Refuse a model folder whose only weights are pickle files (unpickling can run arbitrary code)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model folder {model_dir} does not exist")
    files = [p for p in sorted(model_dir.rglob("*")) if p.is_file()]
    pickles = [p for p in files if p.suffix.lower() in PICKLE_SUFFIXES]
    if pickles and not any(p.suffix == ".safetensors" for p in files):
        first = pickles[0]
        raise ValueError(
            f"{model_dir} holds only pickle weight files ({_names([p.name for p in pickles])}); "
            "difflab does not load them because unpickling a file can run arbitrary code. Convert "
            f"each one with `difflab convert <file> <out.safetensors>`, e.g. `difflab convert "
            f"{first} {first.with_suffix('.safetensors')}`"
        )


def _pick_state_dict(obj: Any, src: Path, key: str | None) -> Mapping[str, Any]:
    """The state dict inside a loaded checkpoint: the top level, or the one under ``key``."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{src} holds a {type(obj).__name__}, not a state dict (name -> tensor)")
    if key is not None:
        if key not in obj:
            raise unknown_name(f"key in {src.name}", key, [str(k) for k in obj])
        obj = obj[key]
    elif not all(isinstance(v, Tensor) for v in obj.values()):
        nested = [k for k in STATE_DICT_KEYS if isinstance(obj.get(k), Mapping)]
        if len(nested) > 1:
            raise ValueError(
                f"{src} holds several state dicts ({', '.join(nested)}): choose one with key="
            )
        if nested:
            obj = obj[nested[0]]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{src}[{key!r}] holds a {type(obj).__name__}, not a state dict")
    return obj


def _unpickler_reason(message: str) -> str:
    """The one informative sentence of torch's weights-only refusal."""
    _, _, detail = message.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (detail or message).splitlines() if line.strip()]
    return lines[0].split(" Please use")[0] if lines else "unknown reason"


def convert_pickle(src: PathLike, dst: PathLike, key: str | None = None) -> dict[str, Tensor]:
    """Convert a pickled PyTorch state dict to safetensors without running code from the file.

    The file is read with ``torch.load(weights_only=True)``, which refuses every object but tensors
    and plain containers. A state dict nested under "state_dict", "model" or "ema" is found when it
    is the only one; ``key`` picks one explicitly. Every entry must be a tensor.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"pickle file {src} does not exist")
    if dst.suffix != ".safetensors":
        raise ValueError(f"convert writes safetensors: give a .safetensors name, not {dst.name}")
    try:
        obj = torch.load(src, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        reason = _unpickler_reason(str(e))
        if not reason.startswith("Unsupported global"):
            raise ValueError(f"{src} is not a readable PyTorch file ({reason})") from None
        raise ValueError(
            f"{src} holds objects other than tensors and plain containers, which could run code "
            f"when unpickled; difflab refuses to load it ({reason})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ValueError(f"{src} is not a readable PyTorch file: {e}") from None
    state = _pick_state_dict(obj, src, key)
    bad = [f"{k} ({type(v).__name__})" for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise ValueError(
            f"{src}: entries {_names(bad)} are not tensors; a state dict holds only tensors"
        )
    tensors = {str(k): v for k, v in state.items()}
    save_weights(dst, tensors, {"converted_from": src.name})
    return tensors
