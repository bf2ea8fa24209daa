"""The shipped MNIST feature classifier: loading, input conventions, accuracy, and image evaluation."""

import json

import pytest
import torch

from difflab import data
from difflab.metrics import classifier, evaluate_images
from difflab.metrics.classifier import MnistClassifier, class_accuracy, load, mnist_features


@pytest.fixture(scope="module")
def mnist_test():
    try:
        test = data.load("mnist", "test")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    return data.to_uint8(test.x[:1000]), test.labels[:1000]


def test_shipped_weights_and_config():
    config = json.loads((classifier.WEIGHTS_DIR / "config.json").read_text())
    assert config["architecture"] == "MnistClassifier"
    assert config["test_accuracy"] >= 0.99
    assert config["training"]["command"] == classifier.TRAIN_COMMAND
    model = load()
    assert not model.training
    feats, logits = model(torch.zeros(2, 1, 28, 28))
    assert feats.shape == (2, config["features"]) and logits.shape == (2, 10)


def test_accuracy_on_test_images(mnist_test):
    images, labels = mnist_test
    assert class_accuracy(images, labels) >= 0.98
    shuffled = labels.roll(1)
    assert class_accuracy(images, shuffled) < 0.3


def test_input_conventions(mnist_test):
    """uint8 k and float k / 127.5 - 1 are the same input; [B, 28, 28] and the 32 x 32 padded
    layout too."""
    images = mnist_test[0][:16]
    feats, logits = mnist_features(images)
    as_float = images.float() / 127.5 - 1
    for other in (
        as_float,
        as_float[:, 0],
        torch.nn.functional.pad(as_float, (2, 2, 2, 2), value=-1),
    ):
        f, g = mnist_features(other)
        assert torch.allclose(f, feats, atol=1e-5) and torch.allclose(g, logits, atol=1e-5)
    with pytest.raises(ValueError, match=r"\[B, 1, 28, 28\]"):
        mnist_features(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match="uint8 or float"):
        mnist_features(torch.zeros(2, 1, 28, 28, dtype=torch.long))
    with pytest.raises(ValueError, match="one label per image"):
        class_accuracy(images, torch.zeros(3, dtype=torch.long))


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = MnistClassifier(channels=(4, 8), features=16).eval()
    classifier.save(model, tmp_path / "m", {"test_accuracy": 0.5})
    loaded = load(tmp_path / "m")
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    assert all(torch.equal(a, b) for a, b in zip(model(x), loaded(x)))
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["channels"] == [4, 8] and config["test_accuracy"] == 0.5
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    with pytest.raises(FileNotFoundError, match="config file"):
        load(tmp_path)


def test_shift_moves_each_image_by_its_offset():
    x = torch.full((64, 1, 28, 28), -1.0)
    x[:, 0, 14, 14] = 1.0
    out = classifier._shift(x, 2, torch.Generator().manual_seed(0))
    rows, cols = torch.nonzero(out[:, 0] == 1, as_tuple=True)[1:]
    assert out.shape == x.shape and len(rows) == 64
    assert set((rows - 14).tolist()) == {-2, -1, 0, 1, 2} == set((cols - 14).tolist())


def test_evaluate_images(mnist_test):
    images, labels = mnist_test
    same = evaluate_images(images[:500], images[500:], labels[:500])
    noise = evaluate_images(
        torch.randint(0, 256, (500, 1, 28, 28), dtype=torch.uint8), images[500:]
    )
    assert set(same) == {
        "frechet_distance",
        "precision",
        "recall",
        "density",
        "coverage",
        "mmd2",
        "class_accuracy",
    }
    assert same["class_accuracy"] >= 0.98
    assert same["precision"] > 0.6 and same["recall"] > 0.6 and same["coverage"] > 0.6
    assert noise["frechet_distance"] > 20 * same["frechet_distance"]
    assert noise["mmd2"] > 20 * abs(same["mmd2"])
    assert noise["precision"] < 0.1 and noise["coverage"] < 0.1
