"""Hostile and damaged input, property-based: whatever bytes a config, weights, array or model file
holds, loading it returns valid data or raises ValueError naming the file, never another exception;
a checkpoint truncated at any offset is refused by name and the run falls back to the one before."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from difflab.data import load as load_data
from difflab.pretrained.catalog import load as load_model
from difflab.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from difflab.training.config import DEFAULTS, load_config
from difflab.utils.weights import load_weights, read_config, save_weights

PROPERTY = settings(
    max_examples=int(os.environ.get("DIFFLAB_HYPOTHESIS_EXAMPLES", 60)),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# Text that looks like configs: TOML/JSON punctuation, keys of the real sections, numbers, junk.
CONFIG_WORDS = st.sampled_from(
    ["[", "]", "{", "}", "=", ",", ":", '"', "\n", " ", "run", "optim", "lr", "steps", "1e-3",
     "-1", "nan", "inf", "true", "[run]", "[model]", "type", '"unet"', "\\", "\x00", "é", "#"]
)  # fmt: skip
CONFIG_TEXT = st.one_of(st.text(max_size=80), st.lists(CONFIG_WORDS, max_size=40).map("".join))


@PROPERTY
@given(text=CONFIG_TEXT, suffix=st.sampled_from([".json", ".toml"]))
def test_any_config_text_reads_as_a_dict_or_a_named_error(tmp_path, text, suffix):
    path = tmp_path / f"config{suffix}"
    path.write_text(text, encoding="utf-8")
    try:
        config = read_config(path)
    except ValueError as e:
        assert str(path) in str(e)
    else:
        assert isinstance(config, dict)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
SECTION_KEYS = st.sampled_from([(s, k) for s, keys in DEFAULTS.items() for k in keys])
OVERRIDES = st.lists(
    st.one_of(
        st.tuples(SECTION_KEYS, st.text(max_size=12)).map(lambda t: f"{t[0][0]}.{t[0][1]}={t[1]}"),
        st.text(max_size=20),
    ),
    max_size=4,
)


@PROPERTY
@given(
    config=st.dictionaries(st.sampled_from([*DEFAULTS, "runn", "x"]), JSON_VALUES, max_size=4),
    overrides=OVERRIDES,
)
def test_training_configs_and_overrides_validate_or_name_the_problem(tmp_path, config, overrides):
    """Any JSON config and any override strings: a full config (every default section and key) or
    a ValueError; never a TypeError/KeyError from deep inside."""
    path = tmp_path / "train.json"
    path.write_text(json.dumps(config))
    try:
        full = load_config(path, overrides)
    except ValueError as e:
        assert str(e)
    else:
        for section, keys in DEFAULTS.items():
            assert isinstance(full[section], dict) and set(keys) <= set(full[section])


def _weights_file(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    tensors = {"w": torch.randn(3, 5), "b": torch.arange(7, dtype=torch.int64)}
    path = tmp_path / "w.safetensors"
    save_weights(path, tensors)
    return path, tensors


@PROPERTY
@given(data=st.data())
def test_damaged_weights_load_intact_or_raise_a_named_error(tmp_path, data):
    """Truncation at any offset is always refused; overwritten bytes are refused or (when they land
    in tensor data, which safetensors has no checksum for) give the same names, dtypes and shapes."""
    path, tensors = _weights_file(tmp_path)
    raw = bytearray(path.read_bytes())
    if data.draw(st.booleans(), label="truncate"):
        raw = raw[: data.draw(st.integers(0, len(raw) - 1), label="length")]
        truncated = True
    else:
        at = data.draw(st.integers(0, len(raw) - 1), label="offset")
        patch = data.draw(st.binary(min_size=1, max_size=16), label="bytes")
        raw[at : at + len(patch)] = patch
        truncated = False
    path.write_bytes(bytes(raw))
    try:
        loaded = load_weights(path)
    except ValueError as e:
        assert str(path) in str(e)
    else:
        assert not truncated, "a truncated file loaded"
        assert {k: (v.dtype, v.shape) for k, v in loaded.items()} == {
            k: (v.dtype, v.shape) for k, v in tensors.items()
        }


@PROPERTY
@given(data=st.data())
def test_damaged_array_files_load_or_raise_a_named_error(tmp_path, data):
    path = tmp_path / data.draw(st.sampled_from(["a.npz", "a.npy"]), label="name")
    images = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    if path.suffix == ".npz":
        np.savez(path, images=images, labels=np.array([0, 1]))
    else:
        np.save(path, images)
    raw = bytearray(path.read_bytes())
    at = data.draw(st.integers(0, len(raw) - 1), label="offset")
    if data.draw(st.booleans(), label="truncate"):
        raw = raw[:at]
    else:
        raw[at : at + 8] = data.draw(st.binary(min_size=1, max_size=8), label="bytes")
    path.write_bytes(bytes(raw))
    try:
        dataset = load_data(str(path))
    except ValueError as e:
        assert str(path) in str(e)
    else:
        assert dataset.x.dtype == torch.float32 and len(dataset.x) >= 1


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A tiny saved MLP model folder (the format `difflab train` exports)."""
    from difflab.data import load as load_dataset
    from difflab.models import build
    from difflab.training.denoising import diffusion_model_config
    from difflab.training.objectives import Objective
    from difflab.utils.folder import save_folder

    net = build({"type": "mlp", "dim": 2, "width": 8, "depth": 1})
    objective = Objective("flow", prediction="velocity")
    data = load_dataset("moons", n=16)
    sample = {"sampler": "euler", "schedule": "flow", "steps": 4, "n": 4, "guidance": 1.0}
    config = diffusion_model_config(net, objective, data, sample, {})
    return save_folder(tmp_path_factory.mktemp("m") / "model", config, net.state_dict())


def _mutations(config: dict) -> st.SearchStrategy:
    """(section, key, value) replacing one entry of the model config with arbitrary JSON."""
    entries = [(s, k) for s, v in config.items() if isinstance(v, dict) for k in v]
    entries += [(None, k) for k in config]
    return st.tuples(st.sampled_from(entries), JSON_VALUES)


def test_model_folder_with_any_config_entry_replaced_loads_or_names_the_problem(
    model_folder, tmp_path
):
    config = json.loads((model_folder / "config.json").read_text())

    @PROPERTY
    @given(mutation=_mutations(config))
    def check(mutation):
        (section, key), value = mutation
        changed = json.loads(json.dumps(config))
        (changed if section is None else changed[section])[key] = value
        folder = tmp_path / "m"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(model_folder, folder)
        (folder / "config.json").write_text(json.dumps(changed))
        try:
            model = load_model(folder)
            model.sample(2, steps=2, seed=0)
        except ValueError as e:
            assert str(e)

    check()


# ---------------------------------------------------------------- truncated checkpoints


@pytest.fixture(scope="module")
def run_with_two_checkpoints(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    model = nn.Sequential(nn.Linear(4, 32), nn.SiLU(), nn.Linear(32, 4))
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    for step in (1, 2):
        save_checkpoint(run, step, model=model, ema={"ema": model}, optimizer=optimizer, keep=None)
    return run


FILES = ["model.safetensors", "ema_ema.safetensors", "optimizer.safetensors", "state.json"]


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.01, 0.1, 0.5, 0.9, 0.999])
def test_a_checkpoint_truncated_at_any_offset_is_named_and_skipped(
    run_with_two_checkpoints, tmp_path, name, fraction
):
    """Cut one file of the newest checkpoint at a fraction of its length (0 bytes, inside the
    8-byte length field, inside the header, inside the tensor data, one byte short)."""
    run = tmp_path / "run"
    shutil.copytree(run_with_two_checkpoints, run)
    newest = run / "checkpoints" / "step_000002"
    file = newest / name
    raw = file.read_bytes()
    file.write_bytes(raw[: min(int(len(raw) * fraction), len(raw) - 1)])
    with pytest.raises(ValueError) as info:
        load_checkpoint(newest)
    assert name in str(info.value)
    assert latest_checkpoint(run) == run / "checkpoints" / "step_000001"
    assert load_checkpoint(run).step == 1
