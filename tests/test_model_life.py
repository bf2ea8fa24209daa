"""One owner for a saved model's life (issue 20): every shipped folder loads by name through its
loader; Model.save writes version 2 and a saved model samples bit-identically after loading;
version-1 folders keep loading; Model.grid and Model.guided hold the grids, guidance defaults and
every guidance check; the guidance rules are a registry."""

import json

import pytest
import torch
from test_pretrained import as_version_1, save_tiny

import difflab
from difflab import guidance, pretrained, text
from difflab.guidance import APG, CFG, CFGZeroStar, classifier_free
from difflab.metrics import classifier as metrics_classifier
from difflab.models.classifiers import (
    MnistClassifier,
    NoisyClassifier,
    load_classifier,
    save_classifier,
)
from difflab.pretrained import Model
from difflab.utils import folder as model_folder

SHIPPED = pretrained.model.SHIPPED
DIFFUSION = ["8gaussians", "mnist", "mnist_2step", "mnist_small", "moons"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("life") / "tiny")


@pytest.fixture(scope="module")
def tiny_model(tiny):
    return Model.load(tiny)


def _folders_with_configs():
    return sorted(p.name for p in SHIPPED.iterdir() if (p / "config.json").is_file())


def test_every_shipped_folder_loads_by_name_through_its_loader():
    assert pretrained.available() == DIFFUSION  # `difflab models` lists exactly these
    assert text.available() == ["shakespeare", "shakespeare_ar"]
    assert pretrained.classifiers() == ["mnist_classifier", "mnist_noisy_classifier"]
    listed = pretrained.available() + text.available() + pretrained.classifiers()
    assert sorted(listed) == _folders_with_configs()  # every shipped folder has a known type
    for name in pretrained.available():
        m = Model.load(name)
        assert m.name == name and m.folder == SHIPPED / name
        assert isinstance(difflab.load(name), Model) and pretrained.load(name).name == name
        assert m.null_class == (name in ("mnist", "mnist_small"))
        assert m.config["version"] == model_folder.VERSION and m.config["type"] == "diffusion"
    for name in text.available():
        assert text.load(name).name == name
    assert isinstance(pretrained.load_classifier("mnist_classifier"), MnistClassifier)
    noisy = pretrained.load_classifier("mnist_noisy_classifier")
    assert isinstance(noisy, NoisyClassifier) and not noisy.training
    assert not any(p.requires_grad for p in noisy.parameters())
    with pytest.raises(ValueError, match="Did you mean 'mnist_classifier'"):
        pretrained.load_classifier("mnist_clasifier")
    with pytest.raises(ValueError, match="holds a classifier model, not a diffusion model"):
        Model.load(SHIPPED / "mnist_classifier")
    with pytest.raises(ValueError, match="holds a text model, not a classifier model"):
        load_classifier(SHIPPED / "shakespeare")


def test_a_saved_model_samples_bit_identically(tiny_model, tmp_path):
    folder = tiny_model.save(tmp_path / "copy")
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "difflab model" and config["version"] == 2
    assert config["type"] == "diffusion" and config["null_class"] is True
    assert config["parameterization"] == tiny_model.parameterization.config
    again = Model.load(folder)
    assert again.config == tiny_model.config and again.name == "copy"
    for options in ({"guidance": 2.0}, {"guidance": 1.0, "sampler": "euler_ancestral"}):
        a = tiny_model.sample(5, seed=3, steps=3, **options)
        assert torch.equal(a, again.sample(5, seed=3, steps=3, **options))
    with pytest.raises(ValueError, match="the folder the model was loaded from"):
        again.save(folder)


@pytest.mark.parametrize("name", ["mnist", "mnist_2step", "moons"])
def test_a_shipped_version_1_model_saves_as_version_2(name, tmp_path):
    """Shipped folders are version 1; their version-2 copy (grids and extras included) samples
    exactly as they do."""
    old = Model.load(name)
    new = Model.load(old.save(tmp_path / name))
    saved = json.loads((tmp_path / name / "config.json").read_text())
    assert saved["version"] == 2 and "parameterization" in saved and "null_class" in saved
    assert saved["objective"] == old.config["objective"]  # the training record is kept
    assert new.saved_grids == old.saved_grids
    if name == "mnist":
        assert new.saved_grids and torch.equal(
            new.grid("optimized:dpmpp_2m:8"), old.grid("optimized:dpmpp_2m:8")
        )
    if name == "mnist_2step":
        assert saved["distillation"] == old.config["distillation"]
    steps = None if name == "mnist_2step" else 2
    kw = {"steps": steps, "seed": 4, "labels": [1, 2] if old.num_classes else None}
    assert torch.equal(old.sample(2, **kw), new.sample(2, **kw))


def test_a_version_1_folder_loads_as_version_2(tiny, tiny_model, tmp_path):
    old = Model.load(as_version_1(save_tiny(tmp_path / "v1")))
    assert old.config["version"] == 2 and old.null_class
    assert old.config["parameterization"] == tiny_model.config["parameterization"]
    assert torch.equal(old.sample(3, seed=1, steps=2), tiny_model.sample(3, seed=1, steps=2))
    no_null = Model.load(as_version_1(save_tiny(tmp_path / "nd", label_dropout=0.0)))
    assert not no_null.null_class
    assert pretrained.describe(tmp_path / "v1")["prediction"] == "edm"


def test_grid_takes_names_sigmas_and_saved_grids(tiny_model):
    m = tiny_model
    default = m.grid()  # the config's schedule and steps: karras, 4
    assert len(default) == 5 and float(default[0]) == pytest.approx(80.0)
    torch.testing.assert_close(m.grid("karras", 4), default)
    assert float(m.grid(steps=2, sigma_max=10.0)[0]) == pytest.approx(10.0)
    explicit = m.grid([5.0, 1.0, 0.0])
    assert explicit.tolist() == [5.0, 1.0, 0.0]
    assert torch.equal(m.generate(2, schedule=[5.0, 1.0, 0.0], sampler="euler").sigmas, explicit)
    shipped = Model.load("mnist")
    assert len(shipped.grid("optimized:dpmpp_2m:8")) == 9
    with pytest.raises(ValueError, match="has no optimized grid"):
        m.grid("optimized:dpmpp_2m:8")
    with pytest.raises(ValueError, match="unknown step grid 'karas'"):
        m.grid("karas")


def test_guided_is_the_one_place_of_guidance_checks(tiny_model, tmp_path):
    m = tiny_model
    x, sigma, labels = torch.randn(3, 1, 8, 8), torch.full((3,), 2.0), torch.tensor([0, 1, 2])
    assert m.guided(1.0) is m.denoiser  # w = 1 is no guidance
    with torch.no_grad():
        expected = classifier_free(m.denoiser, 2.0)(x, sigma, labels=labels)
        assert torch.equal(m.guided()(x, sigma, labels=labels), expected)  # the config's 2
        assert torch.equal(m.guided(2.0)(x, sigma, labels=labels), expected)
        apg = classifier_free(m.denoiser, APG(3.0))(x, sigma, labels=labels)
        assert torch.equal(m.guided(3.0, method="apg")(x, sigma, labels=labels), apg)
    assert m.guidance_rule(2.0, rescale=0.5) == CFG(2.0, rescale=0.5)
    assert m.guidance_rule(2.0, "cfg_zero_star") == CFGZeroStar(2.0, zero_init=80.0)
    assert m.guidance_rule(APG(2.0)) == APG(2.0)
    with pytest.raises(ValueError, match="guidance must be a number >= 0"):
        m.guided(-1.0)
    with pytest.raises(ValueError, match="guidance must be a number >= 0"):
        m.guided(float("nan"))
    with pytest.raises(ValueError, match=r"unknown guidance rule 'apgg'\. Did you mean 'apg'"):
        m.guided(2.0, method="apgg")
    with pytest.raises(ValueError, match="rescale applies to method cfg, not apg"):
        m.guided(2.0, method="apg", rescale=0.5)
    with pytest.raises(ValueError, match="sigma interval must satisfy"):
        m.guided(2.0, interval=(3.0, 1.0))
    points = Model.load(save_tiny(tmp_path / "pts", "points"))
    assert points.guided() is points.denoiser
    with pytest.raises(ValueError, match="needs a class-conditional model; pts is unconditional"):
        points.guided(2.0)
    no_null = Model.load(save_tiny(tmp_path / "nd", label_dropout=0.0))
    assert no_null.guided() is no_null.denoiser  # the config's guidance 2 needs a null class
    for call in (
        lambda: no_null.guided(2.0),
        lambda: no_null.guided(1.0, method="cfg_zero_star"),  # zero-init guides too
        lambda: no_null.class_labels(-1, 2),
    ):
        with pytest.raises(ValueError, match="trained with label_dropout 0"):
            call()


def test_guidance_rules_are_a_registry():
    assert guidance.available() == ["apg", "cfg", "cfg_zero_star"]
    assert guidance.get("cfg") is CFG and guidance.get("apg") is APG
    assert guidance.get("cfg_zero_star")(2.0) == CFGZeroStar(2.0)
    with pytest.raises(ValueError, match=r"unknown guidance rule 'cfg0'\. Did you mean 'cfg'"):
        guidance.get("cfg0")


def test_text_models_write_version_2(tmp_path):
    from difflab.text.data import CharTokenizer
    from difflab.text.transformer import Transformer

    torch.manual_seed(0)
    net = Transformer(vocab_size=3, context=8, dim=16, depth=1, heads=2)
    folder = text.save_text_model(
        tmp_path / "t", net, kind="masked", tokenizer=CharTokenizer("abc")
    )
    config = json.loads((folder / "config.json").read_text())
    assert (config["format"], config["version"], config["type"]) == ("difflab model", 2, "text")
    assert config["kind"] == "masked" and config["tokenizer"] == {"chars": "abc"}
    model = text.load(folder)
    assert all(torch.equal(a, b) for a, b in zip(model.network.parameters(), net.parameters()))
    assert pretrained.model_folders(folder) == []  # not listed among the diffusion models
    with pytest.raises(ValueError, match="holds a text model, not a diffusion model"):
        Model.load(folder)


def test_classifiers_save_and_load_through_the_model_folder(tmp_path):
    torch.manual_seed(0)
    net = NoisyClassifier((8, 8), image_size=8)
    folder = save_classifier(tmp_path / "noisy", net, {"test_accuracy": 0.5})
    config = json.loads((folder / "config.json").read_text())
    assert (config["format"], config["type"], config["architecture"]) == (
        "difflab model",
        "classifier",
        "NoisyClassifier",
    )
    assert config["test_accuracy"] == 0.5 and config["channels"] == [8, 8]
    again = pretrained.load_classifier(folder)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(again(x, 0.5), net.eval()(x, 0.5))
    with pytest.raises(ValueError, match="names architecture 'NoisyClassifier', expected"):
        metrics_classifier.load(folder)
    shipped = metrics_classifier.load()  # the legacy config of the shipped weights
    assert isinstance(shipped, MnistClassifier) and not shipped.training
    copy = metrics_classifier.save(shipped, tmp_path / "mnist", {"test_accuracy": 0.99})
    images = torch.rand(3, 1, 28, 28) * 2 - 1
    with torch.no_grad():
        assert torch.equal(metrics_classifier.load(copy)(images)[1], shipped(images)[1])


@pytest.mark.parametrize(
    "module", ["difflab.training.noisy_classifier", "difflab.metrics.train_mnist"]
)
def test_retraining_commands_run_under_their_module_paths(module):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--out" in done.stdout, done.stderr
