"""Weight and config files: safetensors round trips, damaged files named in errors, strict loading,
config parsing, and refusing pickles (a hostile pickle must never run)."""

import json
import struct

import pytest
import torch
from torch import nn

from difflab.utils.weights import (
    check_no_pickles,
    convert_pickle,
    load_state_dict_strict,
    load_weights,
    read_config,
    save_weights,
    weights_metadata,
    write_config,
)


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "f32": torch.randn(3, 4, generator=g),
        "f16": torch.randn(5, generator=g).half(),
        "bf16": torch.randn(2, 2, generator=g).bfloat16(),
        "f64": torch.randn(2, generator=g).double(),
        "i64": torch.arange(7),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
    }


def test_round_trip_keeps_values_dtypes_and_metadata(tmp_path):
    path = tmp_path / "w.safetensors"
    tensors = _tensors()
    save_weights(path, tensors, {"kind": "test"})
    loaded = load_weights(path)
    assert loaded.keys() == tensors.keys()
    for k, t in tensors.items():
        assert loaded[k].dtype == t.dtype and torch.equal(loaded[k], t), k
    assert weights_metadata(path) == {"kind": "test"}


def test_non_contiguous_and_tied_tensors_are_saved(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    lin = nn.Linear(4, 4)
    tensors = {"t": base.t(), "a": lin.weight, "b": lin.weight, "row": base[1]}
    save_weights(tmp_path / "w.safetensors", tensors)
    loaded = load_weights(tmp_path / "w.safetensors")
    for k, t in tensors.items():
        assert torch.equal(loaded[k], t.detach()), k


def test_failed_save_leaves_the_old_file_and_no_temporaries(tmp_path):
    path = tmp_path / "w.safetensors"
    save_weights(path, {"a": torch.ones(3)})
    before = path.read_bytes()
    with pytest.raises(ValueError, match="not str -> tensor"):
        save_weights(path, {"a": torch.ones(3), "b": 3.0})
    with pytest.raises(ValueError, match="metadata"):
        save_weights(path, {"a": torch.ones(3)}, {"k": 1})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def _header_file(path, header: bytes, data: bytes = b"") -> None:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)


def test_missing_and_damaged_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors does not exist"):
        load_weights(tmp_path / "nope.safetensors")

    good = tmp_path / "good.safetensors"
    save_weights(good, {"a": torch.arange(100.0)})
    raw = good.read_bytes()

    cases = {
        "empty": (b"", "only 0 bytes"),
        "text": (b"this is not a weights file at all", "header length field"),
        "truncated": (raw[:-40], "truncated or corrupt: tensor 'a'"),
        "cut_header": (raw[:20], "header length field"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(content)
        with pytest.raises(ValueError, match=message) as info:
            load_weights(path)
        assert str(path) in str(info.value)

    bad_json = tmp_path / "json.safetensors"
    _header_file(bad_json, b'{"a": {"dtype": "F32", ', b"\0" * 8)
    with pytest.raises(ValueError, match="not valid JSON"):
        load_weights(bad_json)

    out_of_range = tmp_path / "range.safetensors"
    entry = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    _header_file(out_of_range, json.dumps(entry).encode(), b"\0" * 8)
    with pytest.raises(ValueError, match="bytes 0-16 but the file holds only 8"):
        load_weights(out_of_range)

    wrong_size = tmp_path / "size.safetensors"
    entry = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}
    _header_file(wrong_size, json.dumps(entry).encode(), b"\0" * 8)
    with pytest.raises(ValueError, match="needs 16 bytes but spans 8"):
        load_weights(wrong_size)

    not_object = tmp_path / "list.safetensors"
    _header_file(not_object, b"[1, 2]")
    with pytest.raises(ValueError, match="not a JSON object"):
        load_weights(not_object)


def test_strict_loading_names_every_problem():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["1.weight"] = torch.zeros(5, 4)
    del state["0.bias"]
    state.update({f"extra{i}": torch.zeros(1) for i in range(7)})
    with pytest.raises(ValueError) as info:
        load_state_dict_strict(model, state, source="w.safetensors")
    msg = str(info.value)
    assert "w.safetensors does not fit Sequential" in msg
    assert "1 missing keys: 0.bias" in msg
    assert "7 unexpected keys: extra0, extra1, extra2, extra3, extra4 and 2 more" in msg
    assert "1.weight ([5, 4] in w.safetensors, [2, 4] in the model)" in msg

    as_int = {k: v.long() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="dtype kind mismatches"):
        load_state_dict_strict(model, as_int)


def test_strict_loading_converts_dtype():
    model = nn.Linear(3, 2)
    source = {k: torch.randn(v.shape, dtype=torch.float64) for k, v in model.state_dict().items()}
    load_state_dict_strict(model, source)
    assert model.weight.dtype == torch.float32
    assert torch.equal(model.weight, source["weight"].float())


def test_read_config_json_and_toml(tmp_path):
    (tmp_path / "c.json").write_text('{"a": 1, "b": {"c": [1, 2]}}')
    (tmp_path / "c.toml").write_text("a = 1\n[b]\nc = [1, 2]\n")
    assert read_config(tmp_path / "c.json") == read_config(tmp_path / "c.toml")


def test_config_errors_name_file_and_line(tmp_path):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{\n  "a": 1,\n  "b": \n}')
    with pytest.raises(ValueError, match=r"bad.json is not valid JSON: .* at line 4"):
        read_config(bad_json)
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("a = 1\nb = [1,\nc = 2\n")
    with pytest.raises(ValueError, match=r"bad.toml is not valid TOML: .*line 3"):
        read_config(bad_toml)
    top_list = tmp_path / "list.json"
    top_list.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"list\.json must hold a table .* got a list"):
        read_config(top_list)
    with pytest.raises(ValueError, match=r"must end in \.json or \.toml"):
        read_config(tmp_path / "c.yaml")
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        read_config(tmp_path / "missing.json")


def test_write_config_sorted_atomic_and_checked(tmp_path):
    path = tmp_path / "c.json"
    config = {"z": 1, "a": {"y": [1.5, None], "b": True}}
    write_config(path, config)
    assert path.read_text() == json.dumps(config, sort_keys=True, indent=2) + "\n"
    assert read_config(path) == config
    with pytest.raises(ValueError, match=r"config entry a\.t is a Tensor"):
        write_config(path, {"a": {"t": torch.ones(1)}})
    with pytest.raises(ValueError, match=r"give a \.json name"):
        write_config(tmp_path / "c.toml", config)
    assert read_config(path) == config  # the failed writes left it alone


def test_pickle_only_folder_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    torch.save({"w": torch.ones(2)}, tmp_path / "model.ckpt")
    with pytest.raises(ValueError) as info:
        check_no_pickles(tmp_path)
    msg = str(info.value)
    assert "model.ckpt" in msg and "arbitrary code" in msg
    assert "difflab convert <file> <out.safetensors>" in msg
    save_weights(tmp_path / "model.safetensors", {"w": torch.ones(2)})
    check_no_pickles(tmp_path)  # safetensors present: the pickle is simply not used
    with pytest.raises(FileNotFoundError):
        check_no_pickles(tmp_path / "absent")


def test_convert_state_dict(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    torch.save(model.state_dict(), tmp_path / "model.pt")
    convert_pickle(tmp_path / "model.pt", tmp_path / "model.safetensors")
    loaded = load_weights(tmp_path / "model.safetensors")
    assert loaded.keys() == model.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    assert weights_metadata(tmp_path / "model.safetensors") == {"converted_from": "model.pt"}


def test_convert_nested_state_dicts(tmp_path):
    a, b = {"w": torch.ones(2)}, {"w": torch.zeros(2)}
    torch.save({"state_dict": a, "epoch": 3}, tmp_path / "lightning.ckpt")
    out = convert_pickle(tmp_path / "lightning.ckpt", tmp_path / "l.safetensors")
    assert torch.equal(out["w"], a["w"])

    torch.save({"model": a, "ema": b, "step": 10}, tmp_path / "train.pt")
    with pytest.raises(
        ValueError, match=r"several state dicts \(model, ema\): choose one with key="
    ):
        convert_pickle(tmp_path / "train.pt", tmp_path / "t.safetensors")
    out = convert_pickle(tmp_path / "train.pt", tmp_path / "t.safetensors", key="ema")
    assert torch.equal(load_weights(tmp_path / "t.safetensors")["w"], b["w"])
    with pytest.raises(ValueError, match="Did you mean 'ema'"):
        convert_pickle(tmp_path / "train.pt", tmp_path / "t.safetensors", key="emma")


def test_convert_refuses_non_tensor_leaves(tmp_path):
    torch.save({"w": torch.ones(2), "lr": 0.1, "name": "x"}, tmp_path / "mixed.pt")
    with pytest.raises(ValueError, match=r"entries lr \(float\), name \(str\) are not tensors"):
        convert_pickle(tmp_path / "mixed.pt", tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"junk\.pt is not a readable PyTorch file"):
        convert_pickle(tmp_path / "junk.pt", tmp_path / "j.safetensors")


class _Hostile:
    """Unpickling this object opens (creates) the marker file: code run by merely loading a file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_hostile_pickle_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "payload": _Hostile(marker)}, path)
    assert not marker.exists()

    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path, weights_only=True)
    assert not marker.exists()
    with pytest.raises(ValueError, match=r"evil\.pt holds objects other than tensors"):
        convert_pickle(path, tmp_path / "evil.safetensors")
    assert not marker.exists()
    assert not (tmp_path / "evil.safetensors").exists()
    with pytest.raises(ValueError, match="arbitrary code"):
        check_no_pickles(tmp_path)
    assert not marker.exists()

    # the payload is real: an unrestricted load does run it
    torch.load(path, weights_only=False)
    assert marker.exists()
