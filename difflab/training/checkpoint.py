"""Crash-safe training checkpoints: a run killed at any instant resumes bit-identically from the last one.

    run_dir/checkpoints/
        step_000123/                 a complete checkpoint; it appears at once, by renaming a finished
            model.safetensors        temporary folder (written file by file, each one fsynced)
            ema_<name>.safetensors   one per EMA
            optimizer.safetensors    state tensors as "state.<param index>.exp_avg", ...; the rest of
                                     the optimizer state dict (param_groups, step counts) as JSON in the header
            state.json               step, scheduler, data order, config, metrics, RNG states, file sizes
        latest                       the newest checkpoint's name, replaced atomically after the rename

Nothing is pickled: tensors go to safetensors, everything else to JSON (tuples, int keys and NumPy arrays
tagged so they come back as they went in).
"""

from __future__ import annotations

import base64
import copy
import json
import operator
import os
import random
import re
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import Tensor, nn

from difflab.core.tensors import check_name
from difflab.utils.files import atomic_write_bytes
from difflab.utils.weights import (
    load_state_dict_strict,
    load_weights,
    save_weights,
    weights_metadata,
)

__all__ = [
    "Checkpoint",
    "get_rng_state",
    "latest_checkpoint",
    "load_checkpoint",
    "restore",
    "save_checkpoint",
    "set_rng_state",
]

PathLike = str | os.PathLike[str]

FORMAT = "difflab checkpoint"
VERSION = 1
_STEP_DIR = re.compile(r"step_(\d+)")
# temporary folders: ".step_000123.<pid>.<token>.tmp" (being written, or being deleted)
_TEMP_DIR = re.compile(r"\.step_\d+\.(\d+)\.[0-9a-f]+\.tmp")
_EMA_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_TREE_KEY = "difflab.tree"  # safetensors metadata entry holding a state tree's JSON skeleton
_RNG_KEYS = ("python", "numpy", "torch", "cuda")


# ---------------------------------------------------------------- state trees without pickle


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _encode(value: Any, path: str, tensors: dict[str, Tensor] | None) -> Any:
    """``value`` as JSON. Tensors go into ``tensors`` under their dotted path (or inline, base64,
    when ``tensors`` is None); tuples, dicts with non-string keys and NumPy arrays are tagged."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Tensor):
        value = value.detach()
        if tensors is None:
            data = safetensors.torch.save({"t": value.cpu().contiguous()})
            return {"$tensor_b64": base64.b64encode(data).decode("ascii")}
        key, n = path or "value", 1
        while key in tensors:
            key, n = f"{path}#{n}", n + 1
        tensors[key] = value
        return {"$tensor": key}
    if isinstance(value, np.generic):
        return _encode(value.item(), path, tensors)
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise ValueError(f"cannot store {path}: a NumPy array of dtype {value.dtype}")
        return {
            "$ndarray": {
                "dtype": value.dtype.str,
                "shape": list(value.shape),
                "data": value.ravel().tolist(),
            }
        }
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v, _join(path, i), tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, _join(path, i), tensors) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: _encode(v, _join(path, k), tensors) for k, v in value.items()}
        return {
            "$dict": [
                [_encode(k, _join(path, k), None), _encode(v, _join(path, k), tensors)]
                for k, v in value.items()
            ]
        }
    raise ValueError(
        f"cannot store {path or 'the state'}: a {type(value).__name__} is not a tensor, number, "
        "string, list, tuple, dict or NumPy array"
    )


def _decode(value: Any, tensors: Mapping[str, Tensor] | None, source: Path) -> Any:
    """The inverse of ``_encode``."""
    if isinstance(value, list):
        return [_decode(v, tensors, source) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((tag, body),) = value.items()
        if tag == "$tensor":
            if tensors is None or body not in tensors:
                raise ValueError(f"{source} is corrupt: it refers to a missing tensor {body!r}")
            return tensors[body]
        if tag == "$tensor_b64":
            return safetensors.torch.load(base64.b64decode(body))["t"]
        if tag == "$ndarray":
            return np.array(body["data"], dtype=np.dtype(body["dtype"])).reshape(body["shape"])
        if tag == "$tuple":
            return tuple(_decode(v, tensors, source) for v in body)
        if tag == "$dict":
            return {_decode(k, None, source): _decode(v, tensors, source) for k, v in body}
    return {k: _decode(v, tensors, source) for k, v in value.items()}


def _save_piece(path: Path, state: Any) -> None:
    """A flat name -> tensor dict as plain safetensors; any other state tree with its JSON skeleton
    in the header."""
    if isinstance(state, Mapping) and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        save_weights(path, state)
        return
    tensors: dict[str, Tensor] = {}
    skeleton = _encode(state, "", tensors)
    save_weights(path, tensors, {_TREE_KEY: json.dumps(skeleton)})


def _load_piece(path: Path) -> Any:
    tensors = load_weights(path)
    skeleton = weights_metadata(path).get(_TREE_KEY)
    if skeleton is None:
        return tensors
    try:
        return _decode(json.loads(skeleton), tensors, path)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is corrupt: its state description cannot be read ({e})") from None


# ---------------------------------------------------------------- RNG states


def get_rng_state() -> dict[str, Any]:
    """The global random states of Python, NumPy and torch (and CUDA once it is in use)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(legacy=False),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore global random states saved by ``get_rng_state``."""
    for key in state:
        check_name("RNG state", key, _RNG_KEYS)
    if "python" in state:
        random.setstate(state["python"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


# ---------------------------------------------------------------- folders


def _fsync_dir(path: Path) -> None:
    """Make renames and new entries in folder ``path`` durable (where the system allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _step_name(step: int) -> str:
    return f"step_{step:06d}"


def _step_dirs(root: Path) -> list[Path]:
    """The checkpoint folders under ``root``, newest step first."""
    dirs = [p for p in root.iterdir() if _STEP_DIR.fullmatch(p.name) and p.is_dir()]
    return sorted(dirs, key=lambda p: int(_STEP_DIR.fullmatch(p.name).group(1)), reverse=True)


def _temp_name(root: Path, name: str) -> Path:
    return root / f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove_temporaries(root: Path, writer: bool) -> None:
    """Delete what interrupted saves left behind. A reader deletes only folders whose writing
    process has died; the writer (one per run) also deletes temporary pointer files."""
    for p in root.iterdir():
        m = _TEMP_DIR.fullmatch(p.name)
        if m and p.is_dir() and (writer or not _pid_alive(int(m.group(1)))):
            shutil.rmtree(p, ignore_errors=True)
        elif writer and p.name.startswith(".latest.") and p.name.endswith(".tmp"):
            p.unlink(missing_ok=True)


def _discard(root: Path, folder: Path) -> None:
    """Remove a checkpoint folder: renamed away first, so a crash never leaves half of one."""
    trash = _temp_name(root, folder.name)
    os.replace(folder, trash)
    shutil.rmtree(trash)


# ---------------------------------------------------------------- save


def _state_of(obj: Any, what: str) -> Any:
    if callable(getattr(obj, "state_dict", None)):
        return obj.state_dict()
    if isinstance(obj, Mapping):
        return obj
    raise ValueError(f"{what} must be a module, an object with state_dict() or a state dict")


def save_checkpoint(
    run_dir: PathLike,
    step: int,
    *,
    model: nn.Module,
    ema: Mapping[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    rng_state: Mapping[str, Any] | None = None,
    data_state: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    keep: int | None = 2,
) -> Path:
    """Write ``run_dir/checkpoints/step_<step>/`` so that a crash at any instant leaves the previous
    checkpoint intact: files go into a temporary folder, each fsynced, the folder is renamed into
    place, then ``latest`` is updated, and only then are checkpoints beyond the newest ``keep``
    removed (``keep=None`` keeps all). ``rng_state`` defaults to ``get_rng_state()``; ``ema`` maps
    names to modules, objects with state_dict() or state dicts. Returns the checkpoint folder.
    """
    try:
        valid = not isinstance(step, bool) and operator.index(step) >= 0
    except TypeError:
        valid = False
    if not valid:
        raise ValueError(f"checkpoint step must be an integer >= 0, got {step!r}")
    step = operator.index(step)
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ValueError(f"keep must be an integer >= 1 (or None to keep all), got {keep!r}")
    ema = dict(ema or {})
    for name in ema:
        if not isinstance(name, str) or not _EMA_NAME.fullmatch(name):
            raise ValueError(f"EMA name {name!r} must use only letters, digits, '_', '-' and '.'")
    state = {
        "step": step,
        "ema": list(ema),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "data_state": dict(data_state or {}),
        "config": dict(config or {}),
        "metrics": dict(metrics or {}),
        "rng_state": dict(get_rng_state() if rng_state is None else rng_state),
    }
    encoded = _encode(state, "", None)  # fails before anything is written

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    root = run_dir / "checkpoints"
    if not root.is_dir():
        root.mkdir()
        _fsync_dir(run_dir)
    _remove_temporaries(root, writer=True)
    name = _step_name(step)
    tmp = _temp_name(root, name)
    tmp.mkdir()
    try:
        save_weights(tmp / "model.safetensors", model.state_dict())
        for ema_name, obj in ema.items():
            _save_piece(tmp / f"ema_{ema_name}.safetensors", _state_of(obj, f"EMA {ema_name!r}"))
        if optimizer is not None:
            _save_piece(tmp / "optimizer.safetensors", optimizer.state_dict())
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
        doc = {"format": FORMAT, "version": VERSION, "files": files, **encoded}
        atomic_write_bytes(tmp / "state.json", (json.dumps(doc, indent=1) + "\n").encode())
        final = root / name
        if final.exists():  # the same step saved again (e.g. after resuming from an older one)
            _discard(root, final)
        os.replace(tmp, final)
        _fsync_dir(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_bytes(root / "latest", f"{name}\n".encode())
    if keep is not None:
        for old in [p for p in _step_dirs(root) if p != final][keep - 1 :]:
            _discard(root, old)
    return final


# ---------------------------------------------------------------- find and load


def _read_state(folder: Path) -> dict[str, Any]:
    """state.json of a checkpoint folder, after checking every file it lists is there, whole."""
    path = folder / "state.json"
    if not path.is_file():
        raise ValueError(f"checkpoint {folder} is incomplete: state.json is missing")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is corrupt: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{path} is not a difflab checkpoint state file")
    if doc.get("version") != VERSION:
        raise ValueError(
            f"{path} has checkpoint format version {doc.get('version')}, expected {VERSION}"
        )
    files = doc.get("files")
    if not isinstance(files, dict) or not isinstance(doc.get("step"), int):
        raise ValueError(f"{path} is corrupt: its file list or step is missing")
    for file_name, size in files.items():
        file = folder / file_name
        if not file.is_file():
            raise ValueError(f"checkpoint {folder} is incomplete: {file_name} is missing")
        if file.stat().st_size != size:
            raise ValueError(
                f"{file} has {file.stat().st_size} bytes but the checkpoint recorded {size}: "
                "it was truncated or overwritten"
            )
    return doc


def _is_complete(folder: Path) -> bool:
    try:
        _read_state(folder)
    except (ValueError, OSError):
        return False
    return True


def latest_checkpoint(run_dir: PathLike) -> Path | None:
    """The folder ``checkpoints/latest`` names, or the newest complete one when that pointer is
    missing or names an incomplete folder; None when there is none. Removes temporary folders
    left by saves whose process has died."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    _remove_temporaries(root, writer=False)
    try:
        name = (root / "latest").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        name = ""
    if _STEP_DIR.fullmatch(name) and _is_complete(root / name):
        return root / name
    return next((p for p in _step_dirs(root) if _is_complete(p)), None)


@dataclass
class Checkpoint:
    """A loaded checkpoint: each piece of a run's state as the plain state dict it was saved from."""

    path: Path
    step: int
    model: dict[str, Tensor]
    ema: dict[str, Any] = field(default_factory=dict)
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    rng_state: dict[str, Any] | None = None
    data_state: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


def load_checkpoint(path: PathLike) -> Checkpoint:
    """Load a checkpoint folder, or the latest complete checkpoint of a run folder."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint or run folder {path} does not exist")
    if not ((path / "state.json").exists() or _STEP_DIR.fullmatch(path.name)):
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"no complete checkpoint in {path / 'checkpoints'}")
        path = found
    doc = _read_state(path)
    source = path / "state.json"
    try:
        state = {k: _decode(doc[k], None, source) for k in ("ema", "scheduler", "rng_state")}
        state.update(
            {k: _decode(doc[k], None, source) for k in ("data_state", "config", "metrics")}
        )
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{source} is corrupt: {e}") from None
    ema_names = state.pop("ema")
    optimizer = path / "optimizer.safetensors"
    return Checkpoint(
        path=path,
        step=doc["step"],
        model=load_weights(path / "model.safetensors"),
        ema={n: _load_piece(path / f"ema_{n}.safetensors") for n in ema_names},
        optimizer=_load_piece(optimizer) if "optimizer.safetensors" in doc["files"] else None,
        **state,
    )


def restore(
    checkpoint: Checkpoint,
    *,
    model: nn.Module | None = None,
    ema: Mapping[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    rng: bool = True,
) -> None:
    """Put a checkpoint's states back into live objects (and the global RNGs when ``rng``), so that
    training continues exactly as if it had never stopped."""
    where = checkpoint.path
    if model is not None:
        load_state_dict_strict(model, checkpoint.model, source=str(where / "model.safetensors"))
    for name, target in (ema or {}).items():
        check_name(f"EMA in {where}", name, checkpoint.ema)
        state, source = checkpoint.ema[name], str(where / f"ema_{name}.safetensors")
        if isinstance(target, nn.Module):
            load_state_dict_strict(target, state, source=source)
        else:
            target.load_state_dict(copy.deepcopy(state))
    if optimizer is not None:
        if checkpoint.optimizer is None:
            raise ValueError(f"checkpoint {where} holds no optimizer state")
        try:  # a copy: the optimizer updates its state tensors in place
            optimizer.load_state_dict(copy.deepcopy(checkpoint.optimizer))
        except (ValueError, KeyError, RuntimeError) as e:
            raise ValueError(
                f"{where / 'optimizer.safetensors'} does not fit the optimizer: {e}"
            ) from None
    if scheduler is not None:
        if checkpoint.scheduler is None:
            raise ValueError(f"checkpoint {where} holds no scheduler state")
        scheduler.load_state_dict(copy.deepcopy(checkpoint.scheduler))
    if rng and checkpoint.rng_state is not None:
        set_rng_state(checkpoint.rng_state)
