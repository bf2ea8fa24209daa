"""Saved models: strict loading with named errors, and reproducible, batch-invariant sampling."""

import json
import subprocess
import sys

import pytest
import torch

import difflab
from difflab import models, pretrained, sampling
from difflab.data import Dataset
from difflab.guidance import classifier_free
from difflab.training.denoising import diffusion_model_config
from difflab.training.objectives import Objective
from difflab.utils.folder import save_folder
from difflab.utils.weights import load_weights, save_weights


def _randomize(net: torch.nn.Module, seed: int) -> None:
    """Small random weights everywhere (the zero-initialized output layers included), so the
    network's output depends on its input, time and label."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))


def save_tiny(folder, kind: str = "image", label_dropout: float = 0.1, seed: int = 0):
    """A tiny random model folder: "image" (conditional UNet on 1x8x8, 3 classes, EDM), "points"
    (unconditional MLP on 2-D points, flow matching) or "vectors" (unconditional MLP on 3-D)."""
    torch.manual_seed(seed)
    if kind == "image":
        net = models.build(
            {
                "type": "unet",
                "in_channels": 1,
                "image_size": 8,
                "channels": 8,
                "channel_mult": [1, 2],
                "num_res_blocks": 1,
                "attention_resolutions": [],
                "mid_attention": False,
                "num_classes": 3,
                "time_embedding": "fourier",
            }
        )
        objective = Objective(
            "edm", "edm", "edm", "lognormal", label_dropout=label_dropout, sigma_data=0.5
        )
        data = Dataset(torch.zeros(3, 1, 8, 8), torch.arange(3), name="tiny")
        sample = {"sampler": "heun", "schedule": "karras", "steps": 4, "guidance": 2.0, "n": 6}
    else:
        dim = 2 if kind == "points" else 3
        net = models.build({"type": "mlp", "dim": dim, "width": 16, "depth": 1})
        objective = Objective("flow", "velocity", noise_levels="logit_normal")
        data = Dataset(torch.zeros(4, dim), name="toy")
        sample = {"sampler": "euler", "schedule": "flow", "steps": 4, "n": 50}
    _randomize(net, seed)
    config = diffusion_model_config(net, objective, data, sample, {"steps": 7})
    return save_folder(folder, config, net.state_dict())


def as_version_1(folder):
    """Rewrite a model folder's config.json as version 1 wrote it: no type, parameterization nor
    null_class (the objective section held them); returns the folder."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    for key in ("type", "parameterization", "null_class"):
        config.pop(key)
    path.write_text(json.dumps({**config, "version": 1}))
    return folder


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def image_model(image_dir):
    return pretrained.load(image_dir)


def test_load_rebuilds_the_saved_network(image_dir, image_model):
    m = image_model
    assert m.shape == (1, 8, 8) and m.num_classes == 3 and m.name == "tiny"
    assert m.parameterization.prediction == "edm" and m.has_null_class and m.null_class
    assert m.process == m.parameterization.process and m.config["version"] == 2
    assert not m.network.training and not any(p.requires_grad for p in m.network.parameters())
    saved = load_weights(image_dir / "model.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in m.network.state_dict().items())
    x, sigma, labels = torch.randn(2, 1, 8, 8), torch.tensor([0.5, 3.0]), torch.tensor([0, 2])
    expected = Objective.from_config(m.config["objective"]).denoiser(m.network)(
        x, sigma, labels=labels
    )
    assert torch.equal(m.denoiser(x, sigma, labels=labels), expected)
    # a model folder loads through its config.json too, and by name from $DIFFLAB_MODELS
    assert pretrained.resolve(image_dir / "config.json") == image_dir


def test_names_come_from_shipped_folders_and_the_environment(image_dir, monkeypatch, tmp_path):
    monkeypatch.setenv(pretrained.MODELS_ENV, str(image_dir.parent))
    assert pretrained.resolve("tiny") == image_dir
    assert pretrained.load("tiny").num_classes == 3
    with pytest.raises(ValueError, match=r"unknown model 'tinyy'\. Did you mean 'tiny'"):
        pretrained.load("tinyy")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pretrained.load(tmp_path / "nothing")
    for name in pretrained.available():
        assert (pretrained.resolve(name) / "config.json").is_file()
    run = tmp_path / "run"  # a training run's folder: its config.json is the training config
    save_tiny(run / "model", "points")
    (run / "config.json").write_text('{"run": {"steps": 7}}')
    assert pretrained.resolve(run) == run / "model"
    assert pretrained.load(run).name == "run"


def test_import_difflab_stays_cheap_and_load_is_lazy():
    code = "import sys, difflab; assert 'torch' not in sys.modules; print(difflab.load.__module__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "difflab.pretrained.catalog"
    assert difflab.load is pretrained.load


def test_sampling_is_reproducible_and_batch_invariant(image_model):
    a = image_model.sample(5, seed=3, sampler="euler", steps=3)
    assert a.shape == (5, 1, 8, 8) and torch.isfinite(a).all()
    assert torch.equal(a, image_model.sample(5, seed=3, sampler="euler", steps=3))
    assert not torch.allclose(a, image_model.sample(5, seed=4, sampler="euler", steps=3))
    # sample i depends on (seed, i) only: not on n, nor on the batch it is computed in
    for sampler in ("euler", "euler_ancestral"):
        small = image_model.sample(5, seed=3, sampler=sampler, steps=3, guidance=1.0)
        large = image_model.sample(9, seed=3, sampler=sampler, steps=3, guidance=1.0, batch_size=2)
        torch.testing.assert_close(large[:5], small, atol=1e-5, rtol=1e-5)


def test_labels_cycle_or_are_given(image_model):
    s = image_model.generate(7, sampler="euler", steps=2)
    assert s.labels.tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert image_model.generate(3, 2, sampler="euler", steps=2).labels.tolist() == [2, 2, 2]
    one = image_model.sample(3, [2, 0, 1], sampler="euler", steps=2, guidance=1.0)
    other = image_model.sample(3, [0, 0, 1], sampler="euler", steps=2, guidance=1.0)
    assert not torch.allclose(one[0], other[0]) and torch.allclose(one[1:], other[1:])
    with pytest.raises(ValueError, match="label 3 is outside the model's classes 0-2"):
        image_model.sample(2, [0, 3])
    with pytest.raises(ValueError, match="got 3 labels for 2 samples"):
        image_model.sample(2, [0, 1, 2])
    with pytest.raises(ValueError, match="integer"):
        image_model.sample(2, [0.5, 1.0])


def test_guidance_is_classifier_free_guidance(image_model):
    """One Euler step to sigma = 0 returns D_w(x, sigma_max) = D(x) + w (D(x, y) - D(x))."""
    sigmas = torch.tensor([5.0, 0.0], dtype=torch.float64)
    last = {"final": "denoised"}
    s = image_model.generate(
        4, seed=1, sampler="euler", schedule=sigmas, guidance=2.5, sampler_options=last
    )
    assert s.nfe == 1 and s.network_evals == 2
    x = sampling.randn((4, 1, 8, 8), sampling.generators(1, 4)) * 5.0
    with torch.no_grad():
        d = classifier_free(image_model.denoiser, 2.5)(x, torch.full((4,), 5.0), labels=s.labels)
    torch.testing.assert_close(s.x, d)
    plain = image_model.sample(
        4, seed=1, sampler="euler", schedule=sigmas, guidance=1.0, sampler_options=last
    )
    assert not torch.allclose(plain, s.x)


def test_nfe_is_counted_and_defaults_come_from_the_config(image_model):
    s = image_model.generate(2)
    assert s.options == {
        "sampler": "heun",
        "schedule": "karras",
        "steps": 4,
        "guidance": 2.0,
        "seed": 0,
    }
    assert s.nfe == sampling.info("heun").nfe(4) == 7 and s.network_evals == 14
    assert len(s.sigmas) == 5 and float(s.sigmas[0]) == pytest.approx(80.0)
    assert float(image_model.generate(1, sigma_max=10.0).sigmas[0]) == pytest.approx(10.0)


def test_uint8_and_vector_models(tmp_path, image_model):
    u = image_model.sample_uint8(2, sampler="euler", steps=2)
    assert u.dtype == torch.uint8 and u.shape == (2, 1, 8, 8)
    points = pretrained.load(save_tiny(tmp_path / "pts", "points"))
    s = points.generate(10, seed=0)
    assert s.x.shape == (10, 2) and s.labels is None and torch.isinf(s.sigmas[0])
    with pytest.raises(ValueError, match="not images"):
        points.sample_uint8(2)
    with pytest.raises(ValueError, match="unconditional: it takes no labels"):
        points.sample(2, labels=1)
    with pytest.raises(ValueError, match="needs a class-conditional model"):
        points.sample(2, guidance=2.0)


def test_guidance_and_options_are_checked(tmp_path, image_model):
    with pytest.raises(ValueError, match="guidance must be a number >= 0"):
        image_model.sample(2, guidance=-1.0)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        image_model.sample(2, steps=0)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        image_model.sample(0)
    with pytest.raises(ValueError, match=r"unknown sampler 'eular'\. Did you mean 'euler'"):
        image_model.sample(2, sampler="eular")
    with pytest.raises(ValueError, match="unknown step grid"):
        image_model.sample(2, schedule="karas")
    no_dropout = pretrained.load(save_tiny(tmp_path / "nd", label_dropout=0.0))
    assert no_dropout.generate(1, steps=2).options["guidance"] == 1.0  # the config's 2 is unusable
    with pytest.raises(ValueError, match="trained with label_dropout 0"):
        no_dropout.sample(2, guidance=2.0)
    with pytest.raises(ValueError, match="trained with label_dropout 0"):
        no_dropout.sample(2, labels=-1)


def _edit_config(folder, **changes):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            config[section][name] = value
        else:
            config[section] = value
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "other"}, "is not a difflab model config"),
        ({"version": 3}, "written by a newer difflab"),
        ({"network__num_classes": 4}, "the network has 4 classes but the data has 3"),
        ({"data__shape": [1, 16, 16]}, r"takes samples of shape \[1, 8, 8\]"),
        ({"network__channels": 16}, "shape mismatches"),
        ({"network__type": "unett"}, "unknown network type 'unett'"),
        ({"parameterization": {"prediction": "edm"}}, "config needs a 'process'"),
        ({"parameterization__prediction": "epsilon"}, "unknown prediction type 'epsilon'"),
        ({"null_class": "yes"}, "null_class must be true or false"),
        ({"type": "text"}, "holds a text model, not a diffusion model"),
        ({"v1": True, "objective": {"prediction": "edm"}}, "objective config has no 'process'"),
        ({"v1": True, "data__num_classes": 4}, "the network has 3 classes but the data has 4"),
    ],
)
def test_config_errors_are_named(tmp_path, change, message):
    folder = save_tiny(tmp_path / "m")
    if change.pop("v1", False):
        as_version_1(folder)
    _edit_config(folder, **change)
    with pytest.raises(ValueError, match=message):
        pretrained.load(folder)


def test_weight_errors_are_named(tmp_path):
    folder = save_tiny(tmp_path / "m")
    weights = load_weights(folder / "model.safetensors")
    extra = {**weights, "surplus.weight": torch.zeros(2)}
    save_weights(folder / "model.safetensors", extra)
    with pytest.raises(ValueError, match=r"1 unexpected keys: surplus\.weight"):
        pretrained.load(folder)
    missing = dict(weights)
    missing.pop("out.weight" if "out.weight" in weights else sorted(weights)[0])
    save_weights(folder / "model.safetensors", missing)
    with pytest.raises(ValueError, match="1 missing keys"):
        pretrained.load(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"has no model\.safetensors"):
        pretrained.load(folder)
    torch.save(weights, folder / "model.pt")
    with pytest.raises(ValueError, match="only pickle weight files"):
        pretrained.load(folder)
    (folder / "config.json").unlink()
    (folder / "model.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        pretrained.load(folder)
