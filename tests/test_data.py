"""Data sets: MNIST from the shared idx files, corrupt-file errors, toys, image folders, arrays, digits."""

from __future__ import annotations

import gzip
import importlib.util
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from difflab import data
from difflab.data import digits, images, mnist, toys
from difflab.data.dataset import shared_folder

TOY_NAMES = ["moons", "swiss_roll", "checkerboard", "rings", "8gaussians", "25gaussians"]
_IDX_TYPES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D}


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """An idx file (big-endian) holding ``array``, gzip-compressed when asked."""
    code = _IDX_TYPES[array.dtype.type]
    raw = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    raw += array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def tiny_mnist(folder: Path, n: int = 6, split: str = "train", compress: bool = True) -> np.ndarray:
    """A small MNIST-format split in ``folder``; returns its uint8 images."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    image_stem, label_stem = mnist.FILES[split]
    suffix = ".gz" if compress else ""
    write_idx(folder / (image_stem + suffix), pixels, compress)
    write_idx(folder / (label_stem + suffix), np.arange(n, dtype=np.uint8) % 10, compress)
    return pixels


# ---------------------------------------------------------------------- MNIST (the shared files)


@pytest.fixture(scope="module")
def mnist_train() -> data.Dataset:
    return data.load("mnist")


def test_mnist_train(mnist_train: data.Dataset) -> None:
    d = mnist_train
    assert d.x.shape == (60000, 1, 28, 28) and d.x.dtype == torch.float32
    assert d.shape == (1, 28, 28) and len(d) == 60000 and d.num_classes == 10
    assert float(d.x.min()) == -1.0 and float(d.x.max()) == 1.0
    assert d.labels.dtype == torch.long and int(d.labels[0]) == 5
    assert d.labels.unique().tolist() == list(range(10))
    # the float images are the file's bytes, mapped exactly
    folder = shared_folder("mnist")  # where data.load found them
    raw = mnist.read_idx(folder / "train-images-idx3-ubyte.gz", mnist.IMAGES_MAGIC)
    assert torch.equal(data.to_uint8(d.x[:500, 0]), torch.from_numpy(raw[:500].copy()))


def test_mnist_test_split() -> None:
    d = data.load("mnist", split="test")
    assert d.x.shape == (10000, 1, 28, 28)
    assert d.labels.unique().tolist() == list(range(10))
    assert float(d.x.min()) == -1.0 and float(d.x.max()) == 1.0


def test_batched_indexing(mnist_train: data.Dataset) -> None:
    idx = torch.tensor([0, 59999, 7, 7])
    x, labels = mnist_train[idx]
    assert x.shape == (4, 1, 28, 28) and torch.equal(x[2], x[3])
    assert labels.tolist() == mnist_train.labels[idx].tolist() and int(labels[0]) == 5


# ---------------------------------------------------------------------- MNIST (made-up files)


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_root_and_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compress: bool
) -> None:
    pixels = tiny_mnist(tmp_path / "mnist", compress=compress)
    d = data.load("mnist", root=tmp_path / "mnist")
    assert d.x.shape == (6, 1, 28, 28)
    assert torch.equal(data.to_uint8(d.x[:, 0]), torch.from_numpy(pixels))
    assert d.labels.tolist() == [0, 1, 2, 3, 4, 5]
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    assert len(data.load("mnist")) == 6


def test_mnist_missing_names_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"DIFFLAB_DATA") as e:
        data.load("mnist", root=tmp_path)
    assert str(tmp_path) in str(e.value) and "train-images-idx3-ubyte" in str(e.value)
    with pytest.raises(FileNotFoundError, match=r"DIFFLAB_DATA") as e:
        data.load("mnist", root=tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(e.value)


def test_read_idx_round_trip(tmp_path: Path) -> None:
    for dtype in _IDX_TYPES:
        array = (np.arange(24) - 5).astype(dtype).reshape(2, 3, 4)
        for compress in (True, False):
            path = write_idx(tmp_path / f"a-{np.dtype(dtype).name}-{compress}", array, compress)
            out = mnist.read_idx(path)
            assert out.shape == (2, 3, 4) and np.array_equal(out, array)


def _corrupt(folder: Path, defect: str) -> Path:
    """A tiny MNIST split with one defect; returns the file the error must name."""
    tiny_mnist(folder)
    images_gz, labels_gz = (folder / (s + ".gz") for s in mnist.FILES["train"])
    if defect == "truncated gzip":
        images_gz.write_bytes(images_gz.read_bytes()[:-40])
        return images_gz
    if defect == "wrong magic":  # a labels file where the images should be
        write_idx(images_gz, np.zeros(6, dtype=np.uint8))
        return images_gz
    if defect == "count mismatch":
        write_idx(labels_gz, np.zeros(5, dtype=np.uint8))
        return labels_gz
    if defect == "short data":  # header promises more bytes than the file has
        raw = gzip.decompress(images_gz.read_bytes())
        images_gz.write_bytes(gzip.compress(raw[:-28]))
        return images_gz
    if defect == "label range":
        write_idx(labels_gz, np.full(6, 10, dtype=np.uint8))
        return labels_gz
    raise AssertionError(defect)


@pytest.mark.parametrize(
    ("defect", "message"),
    [
        ("truncated gzip", "truncated or corrupt gzip"),
        ("wrong magic", "wrong idx magic number 0x00000801"),
        ("count mismatch", "6 images but .* 5 labels"),
        ("short data", "header says shape"),
        ("label range", "digits 0-9"),
    ],
)
def test_corrupt_mnist_files(tmp_path: Path, defect: str, message: str) -> None:
    named = _corrupt(tmp_path, defect)
    with pytest.raises(ValueError, match=message) as e:
        data.load("mnist", root=tmp_path)
    assert str(named) in str(e.value)


def test_idx_garbage(tmp_path: Path) -> None:
    path = tmp_path / "junk"
    path.write_bytes(b"\x12\x34\x56\x78" + bytes(20))
    with pytest.raises(ValueError, match=r"wrong idx magic number 0x12345678"):
        mnist.read_idx(path)
    path.write_bytes(b"\0\0")
    with pytest.raises(ValueError, match=r"too short"):
        mnist.read_idx(path)
    path.write_bytes(b"\0\0\x08\x03" + bytes(4))
    with pytest.raises(ValueError, match=r"16-byte idx header"):
        mnist.read_idx(path)


# ---------------------------------------------------------------------- toys


@pytest.mark.parametrize("name", TOY_NAMES)
def test_toy_shape_seed_split(name: str) -> None:
    a = data.load(name, n=500, seed=3)
    assert a.x.shape == (500, 2) and a.x.dtype == torch.float32 and a.shape == (2,)
    assert a.labels is None and a.num_classes == 0 and a[torch.tensor([1, 2])][1] is None
    assert torch.equal(a.x, data.load(name, n=500, seed=3).x)
    assert not torch.equal(a.x, data.load(name, "test", n=500, seed=3).x)
    assert not torch.equal(a.x, data.load(name, n=500, seed=4).x)
    # train of seed s + 1 and test of seed s are different streams too
    assert not torch.equal(
        data.load(name, "test", n=500, seed=3).x, data.load(name, n=500, seed=4).x
    )
    g = torch.Generator().manual_seed(0)
    assert toys.TOYS[name](7, g).shape == (7, 2)


@pytest.mark.parametrize("name", TOY_NAMES)
def test_toy_standardized_by_exact_moments(name: str) -> None:
    x = data.load(name, n=200_000, seed=1).x.double()
    assert x.mean(0).abs().max() < 0.02, x.mean(0)
    assert abs(float(x.square().sum(1).mean()) / 2 - 1) < 0.02


def test_toy_shapes_exact() -> None:
    g = torch.Generator().manual_seed(0)
    board = toys.checkerboard(20_000, g).double() * math.sqrt(4 / 3)  # back on [-2, 2]^2
    assert float(board.abs().max()) <= 2.0
    assert bool(((board.floor().sum(1)) % 2 == 0).all())  # only the black squares
    rings = toys.rings(20_000, g).double() * math.sqrt(3.75 + 0.08**2)
    gap = (rings.norm(dim=1)[:, None] - torch.tensor([1.0, 2, 3, 4])).abs().min(1).values
    assert float(gap.quantile(0.99)) < 0.3
    mix = toys.mixture("8gaussians")
    radius = float(mix.means.norm(dim=1)[0])
    assert mix.num_components == 8 and torch.allclose(
        mix.means.norm(dim=1), torch.full((8,), radius, dtype=torch.float64)
    )
    assert toys.mixture("25gaussians").num_components == 25
    with pytest.raises(ValueError, match=r"toy mixture"):
        toys.mixture("moons")


def test_toy_options_checked() -> None:
    with pytest.raises(ValueError, match=r"positive integer"):
        data.load("moons", n=0)
    with pytest.raises(ValueError, match=r"takes the options n, seed; got size"):
        data.load("moons", size=3)
    with pytest.raises(ValueError, match=r"'train', 'test'; got 'val'"):
        data.load("rings", "val")


# ---------------------------------------------------------------------- image folders


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_round_trip_and_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    cats = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    dog = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    _png(tmp_path / "cat" / "a.png", cats[0])
    _png(tmp_path / "cat" / "deeper" / "b.png", cats[1])
    _png(tmp_path / "dog" / "c.png", dog)
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    _png(tmp_path / ".hidden" / "d.png", dog)
    d = data.load(tmp_path, labels=True)
    assert d.x.shape == (3, 3, 8, 8) and d.classes == ["cat", "dog"] and d.num_classes == 2
    assert d.labels.tolist() == [0, 0, 1]
    expected = torch.from_numpy(np.stack([cats[0], cats[1], dog])).permute(0, 3, 1, 2)
    assert torch.equal(data.to_uint8(d.x), expected)
    assert data.load(tmp_path).labels is None
    assert data.load(tmp_path, mode="L").x.shape == (3, 1, 8, 8)


def test_image_folder_resize_center_crop(tmp_path: Path) -> None:
    wide = np.zeros((16, 32), dtype=np.uint8)
    wide[:, 8:24] = 200  # the center square is bright, the sides dark
    _png(tmp_path / "wide.png", wide)
    _png(tmp_path / "rgb.jpg", np.full((20, 20, 3), 90, dtype=np.uint8))
    d = data.load(tmp_path, size=8)
    assert d.x.shape == (2, 3, 8, 8)  # one RGB image makes the set RGB
    u = data.to_uint8(d.x)
    assert int((u[1].int() - 200).abs().max()) <= 1  # sorted: rgb.jpg, wide.png
    assert int((u[0].int() - 90).abs().max()) <= 3  # JPEG is lossy
    assert data.load(tmp_path, size=(4, 6)).shape == (3, 4, 6)


def test_image_folder_gray_by_default(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", np.full((5, 5), 255, dtype=np.uint8))
    _png(tmp_path / "b.png", np.zeros((5, 5), dtype=np.uint8))
    d = data.load(tmp_path)
    assert d.shape == (1, 5, 5) and d.x[0].eq(1).all() and d.x[1].eq(-1).all()


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no .png/.jpg/.jpeg images found") as e:
        data.load(tmp_path)
    assert str(tmp_path) in str(e.value)
    _png(tmp_path / "a.png", np.zeros((5, 5), dtype=np.uint8))
    _png(tmp_path / "b.png", np.zeros((6, 5), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"differ in size .* pass size="):
        data.load(tmp_path)
    with pytest.raises(ValueError, match=r"class sub-folder; .*a.png"):
        data.load(tmp_path, labels=True)
    with pytest.raises(ValueError, match=r"mode must be"):
        data.load(tmp_path, mode="CMYK")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"cannot read image .*broken.png"):
        data.load(tmp_path, size=4)
    with pytest.raises(ValueError, match=r"one set of data"):
        data.load(tmp_path, split="test")
    with pytest.raises(FileNotFoundError, match=r"does not exist"):
        images.load(tmp_path / "nothere")


# ---------------------------------------------------------------------- arrays


def test_npz_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)  # channels last
    labels = np.array([0, 2, 1, 2, 0])
    np.savez(tmp_path / "set.npz", images=pixels, labels=labels)
    d = data.load(tmp_path / "set.npz")
    assert d.x.shape == (5, 3, 6, 7) and d.num_classes == 3 and d.labels.tolist() == labels.tolist()
    assert torch.equal(data.to_uint8(d.x), torch.from_numpy(pixels).permute(0, 3, 1, 2))
    vectors = rng.standard_normal((9, 4))
    np.savez_compressed(tmp_path / "vec.npz", x=vectors)
    v = data.load(tmp_path / "vec.npz")
    assert v.labels is None and torch.equal(v.x, torch.from_numpy(vectors).float())
    np.save(tmp_path / "gray.npy", pixels[..., 0])
    assert data.load(tmp_path / "gray.npy").shape == (1, 6, 7)
    np.save(tmp_path / "line.npy", np.arange(4.0))
    assert data.load(tmp_path / "line.npy").x.shape == (4, 1)
    np.savez(tmp_path / "sampled.npz", samples=vectors[:3], labels=np.array([1, 0, 1]))
    sampled = data.load(tmp_path / "sampled.npz")  # what `difflab sample --out x.npz` writes
    assert sampled.x.shape == (3, 4) and sampled.labels.tolist() == [1, 0, 1]


def test_arrays_refuse_pickle_and_bad_files(tmp_path: Path) -> None:
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"objects.npy holds pickled Python objects"):
        data.load(tmp_path / "objects.npy")
    np.savez(tmp_path / "objects.npz", images=np.array([[1], "x"], dtype=object))
    with pytest.raises(ValueError, match=r"objects.npz holds pickled Python objects"):
        data.load(tmp_path / "objects.npz")
    np.savez(tmp_path / "keys.npz", pictures=np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"keys.npz has arrays \['pictures'\] but none named"):
        data.load(tmp_path / "keys.npz")
    np.savez(tmp_path / "count.npz", x=np.zeros((3, 2)), labels=np.arange(4))
    with pytest.raises(ValueError, match=r"count.npz: 3 samples but labels of shape"):
        data.load(tmp_path / "count.npz")
    np.savez(tmp_path / "nan.npz", x=np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match=r"nan.npz data contains NaN"):
        data.load(tmp_path / "nan.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match=r"junk.npz is not a NumPy .npz file"):
        data.load(tmp_path / "junk.npz")
    (tmp_path / "table.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"table.csv: not a data set"):
        data.load(tmp_path / "table.csv")
    with pytest.raises(FileNotFoundError, match=r"missing.npz does not exist"):
        data.load(tmp_path / "missing.npz")


# ---------------------------------------------------------------------- digits


def test_digits() -> None:
    try:
        digits.csv_path()
    except ImportError as e:
        pytest.skip(str(e))
    d = data.load("digits")
    assert d.x.shape == (1797, 1, 8, 8) and d.num_classes == 10
    assert d.labels.unique().tolist() == list(range(10))
    assert float(d.x.min()) == -1.0 and float(d.x.max()) == 1.0
    assert torch.equal((d.x + 1) * 8, ((d.x + 1) * 8).round())  # 17 gray levels
    with pytest.raises(ValueError, match=r"'train'; got 'test'"):
        data.load("digits", "test")


def test_digits_match_scikit_learn() -> None:
    datasets = pytest.importorskip("sklearn.datasets")
    reference = datasets.load_digits()
    d = data.load("digits")
    assert np.array_equal((d.x[:, 0].numpy() + 1) * 8, reference.images)
    assert np.array_equal(d.labels.numpy(), reference.target)


def test_digits_without_scikit_learn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"pip install scikit-learn"):
        data.load("digits")


# ---------------------------------------------------------------------- registry and pixels


def test_registry() -> None:
    assert set(data.available()) == {"mnist", "digits", *TOY_NAMES}
    with pytest.raises(ValueError, match=r"unknown data set 'mnsit'. Did you mean 'mnist'"):
        data.load("mnsit")
    with pytest.raises(ValueError, match=r"takes the options root; got n"):
        data.load("mnist", n=3)
    with pytest.raises(FileNotFoundError, match=r"does not exist"):
        data.load("no/such/folder")


def test_uint8_round_trip() -> None:
    u = torch.arange(256, dtype=torch.uint8)
    x = data.from_uint8(u)
    assert x.dtype == torch.float32 and float(x[0]) == -1.0 and float(x[-1]) == 1.0
    assert torch.equal(data.to_uint8(x), u)
    assert torch.equal(data.from_uint8(u.numpy()), x)
    assert data.to_uint8(torch.tensor([-3.0, 3.0])).tolist() == [0, 255]
    with pytest.raises(ValueError, match=r"uint8"):
        data.from_uint8(torch.zeros(3))
