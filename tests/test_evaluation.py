"""difflab.metrics: sample quality against reference splits, and samplers compared at equal NFE."""

import numpy as np
import pytest
import torch
from PIL import Image

from difflab import data, models, pretrained, sampling
from difflab.data import Dataset
from difflab.metrics import (
    NfeRow,
    bench_nfe,
    evaluate_samples,
    format_table,
    load_reference,
    plot_nfe,
    read_samples,
)
from difflab.metrics.nfe import steps_for_nfe
from difflab.training.denoising import diffusion_model_config
from difflab.training.objectives import Objective
from difflab.utils.folder import save_folder

REF_N = 400  # reference samples: enough for a stable Fréchet distance in 128 features, and fast


def _randomize(net: torch.nn.Module, seed: int) -> None:
    """Small random weights everywhere (zero-initialized output layers included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))


def save_tiny_mnist(folder):
    """A random class-conditional UNet on MNIST-shaped images (EDM), saved as a model folder."""
    torch.manual_seed(0)
    net = models.build(
        {
            "type": "unet",
            "in_channels": 1,
            "image_size": 28,
            "channels": 8,
            "channel_mult": [1, 2],
            "num_res_blocks": 1,
            "attention_resolutions": [],
            "mid_attention": False,
            "num_classes": 10,
            "time_embedding": "fourier",
        }
    )
    _randomize(net, 0)
    objective = Objective("edm", "edm", "edm", "lognormal", label_dropout=0.1, sigma_data=0.5)
    mnist = Dataset(torch.zeros(10, 1, 28, 28), torch.arange(10), name="mnist/train")
    sample = {"sampler": "euler", "schedule": "karras", "steps": 4}
    return save_folder(
        folder, diffusion_model_config(net, objective, mnist, sample, {}), net.state_dict()
    )


def save_tiny_points(folder):
    """A random unconditional MLP on 2-D points (flow matching, whose grid starts at sigma = inf)."""
    torch.manual_seed(0)
    net = models.build({"type": "mlp", "dim": 2, "width": 16, "depth": 1})
    _randomize(net, 1)
    objective = Objective("flow", "velocity", noise_levels="logit_normal")
    moons = Dataset(torch.zeros(4, 2), name="moons/train")
    sample = {"sampler": "euler", "schedule": "flow", "steps": 4}
    return save_folder(
        folder, diffusion_model_config(net, objective, moons, sample, {}), net.state_dict()
    )


@pytest.fixture(scope="module")
def mnist_model(tmp_path_factory):
    return pretrained.load(save_tiny_mnist(tmp_path_factory.mktemp("models") / "tiny_mnist"))


@pytest.fixture(scope="module")
def points_model(tmp_path_factory):
    return pretrained.load(save_tiny_points(tmp_path_factory.mktemp("models") / "tiny_points"))


@pytest.fixture(scope="module")
def mnist_rows(mnist_model):
    return bench_nfe(mnist_model, ["euler", "heun"], [3, 4, 5], n=8, reference_n=REF_N)


@pytest.fixture(scope="module")
def mnist_uint8():
    test, train = data.load("mnist", "test"), data.load("mnist", "train")
    return data.to_uint8(test.x[:REF_N]), test.labels[:REF_N], data.to_uint8(train.x[:REF_N])


def test_steps_for_nfe_matches_the_registry_exactly():
    assert steps_for_nfe("euler", 7) == 7
    assert steps_for_nfe("heun", 5) == 3  # 2 steps - 1
    assert steps_for_nfe("heun", 4) is None
    assert steps_for_nfe("dpm_solver_3", 7) == 3
    assert steps_for_nfe("heun", 4, infinite_start=True) == 3  # 1 + (2 (steps - 1) - 1)
    for name in ("euler", "heun", "dpmpp_2s", "dpm_solver_3", "restart"):
        info = sampling.info(name)
        for budget in range(1, 30):
            for infinite in (False, True):
                steps = steps_for_nfe(name, budget, infinite)
                reachable = {info.nfe(s, infinite) for s in range(1, budget + 1)}
                assert (steps is not None) == (budget in reachable)
                if steps is not None:
                    assert info.nfe(steps, infinite) == budget


def test_steps_for_nfe_rejects_adaptive_and_unknown_samplers():
    with pytest.raises(ValueError, match="adaptive"):
        steps_for_nfe("adaptive", 10)
    with pytest.raises(ValueError, match="Did you mean 'heun'"):
        steps_for_nfe("huen", 10)


def test_bench_nfe_rows_have_the_budgets_each_sampler_can_meet(mnist_rows):
    got = [(r.sampler, r.nfe, r.steps) for r in mnist_rows]
    assert got == [
        ("euler", 3, 3),
        ("euler", 4, 4),
        ("euler", 5, 5),
        ("heun", 3, 2),
        ("heun", 5, 3),
    ]
    assert all(np.isfinite(r.fd) and r.fd > 0 and r.seconds >= 0 for r in mnist_rows)


def test_bench_nfe_fd_is_that_of_evaluate_samples(mnist_model, mnist_rows):
    x = mnist_model.sample_uint8(8, sampler="heun", steps=3, seed=0)
    fd = evaluate_samples(x, reference="mnist-test", n=REF_N)["frechet_distance"]
    assert mnist_rows[-1].fd == pytest.approx(fd, rel=1e-9)


def test_bench_nfe_counts_the_infinite_first_step(points_model):
    # flow matching starts at sigma = inf: heun spends 1 + (2 (steps - 1) - 1) NFE, so 4 is met
    rows = bench_nfe(points_model, ["heun", "euler"], [3, 4], n=16, reference_n=REF_N)
    assert [(r.sampler, r.nfe, r.steps) for r in rows] == [
        ("heun", 4, 3),
        ("euler", 3, 3),
        ("euler", 4, 4),
    ]


def test_bench_nfe_checks_its_input_before_sampling(mnist_model, tmp_path):
    with pytest.raises(ValueError, match="adaptive"):
        bench_nfe(mnist_model, ["euler", "adaptive"], [4], n=4)
    with pytest.raises(ValueError, match="positive integers"):
        bench_nfe(mnist_model, ["euler"], [0], n=4)
    with pytest.raises(ValueError, match="shape"):
        bench_nfe(mnist_model, ["euler"], [2], n=4, reference="moons-test", reference_n=50)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        bench_nfe(pretrained.load(tmp_path / "missing"), ["euler"], [2], n=4)


def test_format_table_has_one_line_per_row(mnist_rows):
    lines = format_table(mnist_rows).splitlines()
    assert lines[0].split() == ["sampler", "NFE", "steps", "FD", "seconds"]
    assert len(lines) == 2 + len(mnist_rows)
    for line, row in zip(lines[2:], mnist_rows):
        cells = line.split()
        assert cells[:3] == [row.sampler, str(row.nfe), str(row.steps)]
        assert float(cells[3]) == pytest.approx(row.fd, rel=1e-3)


def test_plot_nfe_writes_a_valid_png_atomically(tmp_path):
    rows = [
        NfeRow("euler", 5, 5, 80.0, 0.1),
        NfeRow("euler", 10, 10, 20.0, 0.2),
        NfeRow("euler", 20, 20, 6.0, 0.4),
        NfeRow("heun", 5, 3, 120.0, 0.1),
        NfeRow("heun", 11, 6, 8.0, 0.2),
    ]
    out = tmp_path / "nfe.png"
    out.write_bytes(b"an older file")
    plot_nfe(rows, out, title="tiny")
    assert [p.name for p in tmp_path.iterdir()] == ["nfe.png"]  # no temporary file left behind
    with Image.open(out) as image:
        image.verify()
    with Image.open(out) as image:
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    for color in [(31, 119, 180), (255, 127, 14)]:  # one line per sampler, in its own colour
        assert (pixels == color).all(1).sum() > 50
    # an FD of 0 cannot go on a log axis: the FD axis turns linear
    plot_nfe([NfeRow("euler", 5, 5, 0.0, 0.1), NfeRow("euler", 10, 10, 2.0, 0.1)], out)
    with Image.open(out) as image:
        image.verify()


def test_plot_nfe_refuses_nothing_and_missing_folders(tmp_path):
    with pytest.raises(ValueError, match="no rows"):
        plot_nfe([], tmp_path / "a.png")
    with pytest.raises(ValueError, match="does not exist"):
        plot_nfe([NfeRow("euler", 5, 5, 1.0, 0.1)], tmp_path / "missing" / "a.png")


def test_evaluate_samples_ranks_real_digits_above_noise(mnist_uint8):
    test_u8, test_labels, train_u8 = mnist_uint8
    real = evaluate_samples(test_u8, test_labels, reference="mnist-train", n=REF_N)
    noise = torch.randint(0, 256, test_u8.shape, generator=torch.Generator().manual_seed(0))
    fake = evaluate_samples(noise.to(torch.uint8), reference=train_u8)
    assert set(real) == {
        "frechet_distance",
        "precision",
        "recall",
        "density",
        "coverage",
        "mmd2",
        "class_accuracy",
    }
    assert real["class_accuracy"] > 0.95 and real["precision"] > 0.6 and real["recall"] > 0.6
    assert fake["frechet_distance"] > 20 * real["frechet_distance"]
    assert fake["mmd2"] > 10 * abs(real["mmd2"]) and fake["precision"] < 0.1


def test_evaluate_samples_scores_vectors_against_a_toy_split():
    moons = data.load("moons", "train", n=REF_N).x
    real = evaluate_samples(moons, reference="moons-test", n=REF_N)
    far = evaluate_samples(torch.randn(REF_N, 2) * 2, reference="moons-test", n=REF_N)
    assert set(real) == {"frechet_distance", "sliced_w2", "mmd2"}
    for key in real:
        assert far[key] > 5 * abs(real[key])
    assert evaluate_samples(moons, reference="moons-test", n=REF_N, seed=0) == real
    with pytest.raises(ValueError, match="shape"):
        evaluate_samples(moons)  # the default reference is MNIST
    with pytest.raises(ValueError, match="need images"):
        evaluate_samples(moons, torch.zeros(REF_N, dtype=torch.long), reference="moons-test")


def test_load_reference_reads_splits_names_paths_and_tensors(tmp_path):
    assert load_reference("mnist-test", 5).shape == (5, 1, 28, 28)
    assert torch.equal(load_reference("moons", 50), data.load("moons", "test", n=50).x)
    np.save(tmp_path / "ref.npy", np.ones((7, 2), dtype=np.float32))
    assert load_reference(tmp_path / "ref.npy", 5).shape == (5, 2)
    assert load_reference(torch.zeros(9, 3), 4).shape == (4, 3)
    with pytest.raises(ValueError, match="Did you mean 'mnist'"):
        load_reference("mnsit", 5)
    with pytest.raises(ValueError, match="split"):
        load_reference("digits", 5)  # digits has only a train split
    with pytest.raises(ValueError, match="at least 2"):
        load_reference("mnist-test", 1)


def test_read_samples_reads_what_difflab_sample_writes(tmp_path):
    images = np.zeros((4, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=images, labels=np.array([0, 1, 2, 3]))
    x, labels = read_samples(tmp_path / "a.npz")
    assert x.dtype == torch.uint8 and x.shape == (4, 28, 28) and labels.tolist() == [0, 1, 2, 3]
    np.savez(tmp_path / "b.npz", samples=np.zeros((4, 2), np.float32), labels=np.full(4, -1))
    x, labels = read_samples(tmp_path / "b.npz")
    assert x.shape == (4, 2) and labels is None  # the null class has no class to check
    np.savez(tmp_path / "c.npz", other=images)
    with pytest.raises(ValueError, match="none named images"):
        read_samples(tmp_path / "c.npz")
    np.savez(tmp_path / "d.npz", images=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickled"):
        read_samples(tmp_path / "d.npz")
    (tmp_path / "e.npz").write_text("not numpy")
    with pytest.raises(ValueError, match=r"is not a NumPy \.npz file"):
        read_samples(tmp_path / "e.npz")
    with pytest.raises(FileNotFoundError):
        read_samples(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match=r"expected a \.npy or \.npz file"):
        read_samples(tmp_path / "samples.txt")
    np.save(tmp_path / "f.npy", np.ones((3, 2), np.float32))
    x, labels = read_samples(tmp_path / "f.npy")
    assert x.shape == (3, 2) and labels is None
