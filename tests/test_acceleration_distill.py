"""Distillation on exact Gaussian-mixture teachers: a distilled student's one-step output lands
where its multi-step teacher does (progressive distillation: the teacher's own DDIM steps; reflow
and consistency distillation: the exact probability-flow ODE), resumed runs are exact, and
``difflab distill`` writes models that sample with their own few-step settings."""

import copy
import json
import math

import pytest
import torch

import difflab
from difflab import models, sampling
from difflab.acceleration import DistillTrainer, GridLevels, few_step_grid, full_config, ode_step
from difflab.cli import main
from difflab.core import processes
from difflab.data import Dataset
from difflab.testing import GaussianMixture
from difflab.training.objectives import Objective

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
# two overlapping, elongated components: a smooth teacher flow that a small MLP fits in seconds
MIXTURE = GaussianMixture(
    torch.ones(2), torch.tensor([[0.6, 0.3], [-0.6, -0.3]]), torch.tensor([[0.25, 0.1], [0.1, 0.2]])
)
OBJECTIVE = Objective("edm", prediction="edm", weighting="edm", noise_levels="lognormal")


# a class-conditional mixture: two components per label, the teacher D(x, sigma, labels) exact per label
LABELLED = GaussianMixture(
    torch.ones(4),
    torch.tensor([[0.6, 0.3], [-0.6, -0.3], [0.3, -0.6], [-0.3, 0.6]]),
    torch.tensor([[0.1, 0.05], [0.05, 0.1], [0.1, 0.05], [0.05, 0.1]]),
    torch.tensor([0, 0, 1, 1]),
)
CLASSES = [LABELLED.condition(k) for k in range(2)]


def teacher(x, sigma, **cond):
    return MIXTURE(x, sigma)


def labelled_teacher(x, sigma, labels):
    sigma = torch.as_tensor(sigma).expand(len(x))
    out = torch.empty_like(x)
    for k, mixture in enumerate(CLASSES):
        rows = labels == k
        out[rows] = mixture(x[rows], sigma[rows]).to(x)
    return out


def _distill(tmp_path, method, steps, on_export=None, den=teacher, num_classes=0, **options):
    torch.manual_seed(0)
    net = {"type": "mlp", "dim": 2, "width": 64, "depth": 2, "num_classes": num_classes}
    student = models.build(net)
    data = Dataset(MIXTURE.sample(20000, torch.Generator().manual_seed(0)).float())
    config = {
        "run": {"steps": steps, "log_every": 50, "checkpoint_every": 10**6, "threads": 1},
        "method": {"name": method, **options},
        "teacher": {"solver": "euler", "sampler": "heun", "steps": 16},
        "optim": {"lr": 3e-3, "batch_size": 256, "schedule": "cosine", "warmup": 20},
        "ema": {"sigma_rel": 0.05},
    }
    trainer = DistillTrainer(
        config, den, student, OBJECTIVE, data, SIGMA_MIN, SIGMA_MAX, tmp_path, on_export, False
    )
    trainer.fit()
    return trainer


def _noise(n=2000):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(5))


def _error(a, b):
    """Mean Euclidean distance between paired 2-D points."""
    return float((a.double() - b.double()).norm(dim=1).mean())


def test_progressive_one_step_student_matches_its_four_step_teacher(tmp_path):
    exported = {}

    def export(name, net, sample):
        exported[name] = (copy.deepcopy(net), sample)

    trainer = _distill(tmp_path, "progressive", 400, export, start_steps=4, export=[2, 1])
    assert sorted(exported) == ["model_1step", "model_2step"]
    net, sample = exported["model_1step"]
    assert sample["schedule"] == [SIGMA_MAX, 0.0] and sample["sampler_options"] == {
        "final": "denoised"
    }
    z = _noise()
    x = SIGMA_MAX * z
    with torch.no_grad():
        one = OBJECTIVE.denoiser(net)(x, torch.tensor(SIGMA_MAX))
    # the teacher: DDIM on the 4-step grid, its last step the jump to D
    grid, steps = trainer.grid0, x.double()
    for i in range(4):
        steps = ode_step(teacher, steps, grid[i].expand(len(x)), grid[i + 1].expand(len(x)))
    naive = MIXTURE(x.double(), SIGMA_MAX)  # one DDIM step of the teacher: its mean
    error, baseline = _error(one, steps), _error(naive, steps)
    print(
        f"progressive: 1-step student vs 4-step teacher {error:.4f} (teacher's 1 step {baseline:.4f})"
    )
    assert error < 0.06 and error < 0.1 * baseline  # measured 0.0077 and 0.43


def test_reflow_one_step_student_matches_the_exact_flow(tmp_path):
    trainer = _distill(tmp_path, "reflow", 400, pairs=4096)
    z = _noise()
    exact = MIXTURE.ode(SIGMA_MAX * z.double(), SIGMA_MAX, 0.0).x
    with torch.no_grad():
        one = OBJECTIVE.denoiser(trainer.ema.model)(SIGMA_MAX * z, torch.tensor(SIGMA_MAX))
    error, baseline = _error(one, exact), _error(MIXTURE(SIGMA_MAX * z.double(), SIGMA_MAX), exact)
    print(f"reflow: 1-step student vs exact flow {error:.4f} (teacher's 1 step {baseline:.4f})")
    assert error < 0.06 and error < 0.1 * baseline  # measured 0.024 and 0.78


def test_reflow_on_the_student_grid_with_labels_matches_the_exact_conditional_flow(tmp_path):
    """noise_levels = "grid": the regression at the 2-step grid's levels only; a class-conditional
    teacher (labels drawn with the pairs, passed to teacher and student)."""
    trainer = _distill(
        tmp_path,
        "reflow",
        400,
        den=labelled_teacher,
        num_classes=2,
        pairs=4096,
        noise_levels="grid",
    )
    grid = few_step_grid(2, SIGMA_MIN, SIGMA_MAX)
    assert torch.equal(trainer.levels.levels, grid[:2])
    drawn = trainer.levels(1000, torch.Generator().manual_seed(0))
    assert set(drawn.tolist()) == set(grid[:2].tolist())
    z, labels = _noise(), torch.arange(2000) % 2
    exact = torch.empty_like(z, dtype=torch.float64)
    for k, mixture in enumerate(CLASSES):
        exact[labels == k] = mixture.ode(SIGMA_MAX * z[labels == k].double(), SIGMA_MAX, 0.0).x
    euler = sampling.get("euler")

    def two_steps(den):
        with torch.no_grad():
            return euler(den, SIGMA_MAX * z, grid, final="denoised", cond={"labels": labels})

    error = _error(two_steps(OBJECTIVE.denoiser(trainer.ema.model)), exact)
    baseline = _error(two_steps(labelled_teacher), exact)
    print(f"reflow, grid levels: 2-step student vs exact flow {error:.4f} (teacher {baseline:.4f})")
    assert error < 0.06 and error < 0.2 * baseline  # measured 0.040 and 0.56
    with pytest.raises(ValueError, match="finite positive"):
        GridLevels([math.inf, 0.5, 0.0])


def test_consistency_distillation_one_step_matches_the_exact_flow(tmp_path):
    trainer = _distill(tmp_path, "consistency_distillation", 600, levels=12)
    z = _noise()
    exact = MIXTURE.ode(SIGMA_MAX * z.double(), SIGMA_MAX, 0.0).x
    with torch.no_grad():
        one = OBJECTIVE.denoiser(trainer.ema.model)(SIGMA_MAX * z, torch.tensor(SIGMA_MAX))
    error, baseline = _error(one, exact), _error(MIXTURE(SIGMA_MAX * z.double(), SIGMA_MAX), exact)
    print(f"CD: 1-step student vs exact flow {error:.4f} (teacher's 1 step {baseline:.4f})")
    assert error < 0.2 and error < 0.3 * baseline  # measured 0.16 and 0.78
    settings = trainer.sample_settings()
    assert settings["sampler"] == "consistency"
    assert settings["schedule"] == few_step_grid(2, SIGMA_MIN, SIGMA_MAX).tolist()
    assert settings["schedule"] == [SIGMA_MAX, pytest.approx(2.5152, abs=1e-4), 0.0]


def test_consistency_training_learns_without_a_teacher(tmp_path):
    trainer = _distill(tmp_path, "consistency_training", 400, levels_start=4, levels_end=32)
    z = _noise()
    exact = MIXTURE.ode(SIGMA_MAX * z.double(), SIGMA_MAX, 0.0).x
    with torch.no_grad():
        one = OBJECTIVE.denoiser(trainer.ema.model)(SIGMA_MAX * z, torch.tensor(SIGMA_MAX))
    error, baseline = _error(one, exact), _error(MIXTURE(SIGMA_MAX * z.double(), SIGMA_MAX), exact)
    print(f"CT: 1-step student vs exact flow {error:.4f} (teacher's 1 step {baseline:.4f})")
    assert error < 0.7 * baseline  # measured 0.35 and 0.78


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path):
    def run(folder, stop=None):
        torch.manual_seed(0)
        student = models.build({"type": "mlp", "dim": 2, "width": 16, "depth": 1})
        data = Dataset(MIXTURE.sample(512, torch.Generator().manual_seed(0)).float())
        config = {
            "run": {"steps": 20, "checkpoint_every": 5, "log_every": 5},
            "method": {"name": "progressive", "start_steps": 4},
            "optim": {"lr": 1e-3, "batch_size": 32, "schedule": "cosine"},
        }
        trainer = DistillTrainer(
            config, teacher, student, OBJECTIVE, data, SIGMA_MIN, SIGMA_MAX, folder, None, False
        )
        trainer.resume()
        step = trainer.train_step

        def interrupted():
            if trainer.step == stop:
                raise KeyboardInterrupt
            return step()

        trainer.train_step = interrupted
        trainer.fit()
        return trainer

    straight = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", stop=13)  # phase 1 of 2 ended at step 10
    resumed = run(tmp_path / "b")
    assert resumed.step == 20 and resumed.phase == straight.phase == 2
    for a, b in zip(straight.student.state_dict().values(), resumed.student.state_dict().values()):
        assert torch.equal(a, b)


def test_config_errors():
    with pytest.raises(ValueError, match="distillation method"):
        full_config({"method": {"name": "progresive"}})
    with pytest.raises(ValueError, match="option of method"):
        full_config({"method": {"name": "reflow", "levels": 4}})
    with pytest.raises(ValueError, match="power of 2"):
        full_config({"method": {"name": "progressive", "start_steps": 12, "end_steps": 1}})
    with pytest.raises(ValueError, match="sigma_max"):
        DistillTrainer(
            {"method": {"name": "consistency_training"}},
            teacher,
            models.build({"type": "mlp", "dim": 2}),
            OBJECTIVE,
            Dataset(torch.zeros(4, 2)),
            0.002,
            float("inf"),
        )


def test_cli_reflow_of_the_shipped_moons_model(tmp_path, capsys):
    """difflab distill writes a model folder whose own settings (Euler, the jump to D at the end)
    are what difflab.load(...).sample uses."""
    config = tmp_path / "reflow.toml"
    config.write_text(
        '[run]\nsteps = 20\nthreads = 1\n[teacher]\nmodel = "moons"\nsteps = 4\n'
        '[method]\nname = "reflow"\npairs = 256\npair_batch = 128\n'
        "[optim]\nbatch_size = 64\n[sample]\nsteps = 1\n"
    )
    run_dir = tmp_path / "run"
    assert main(["distill", "--config", str(config), "--run-dir", str(run_dir)]) == 0
    assert "wrote" in capsys.readouterr().out
    model = difflab.load(run_dir / "model")
    saved = json.loads((run_dir / "model" / "config.json").read_text())
    assert saved["distillation"]["method"] == "reflow" and saved["sample"]["steps"] == 1
    x = model.sample(8, seed=3)
    gens = sampling.generators(3, 8)
    z = sampling.randn((8, 2), gens)
    manual = model.denoiser(z, torch.tensor(float("inf")))  # one step from sigma = inf: D itself
    torch.testing.assert_close(x, manual)
    config.write_text('[teacher]\nmodel = "moons"\n[method]\nname = "progressive"\n')
    assert main(["distill", "--config", str(config)]) == 2
    assert "finite sigma_max" in capsys.readouterr().err


def test_consistency_sampler_denoises_then_renoises():
    """x0 = f(x, s_i), x = x0 + s_{i+1} z with each sample's own generator; the last x0 is the
    sample (f here any deterministic map of (x, sigma))."""

    def f(x, sigma, **cond):
        return torch.tanh(x / (1 + sigma[:, None])) + cond["labels"][:, None]

    sigmas = few_step_grid(3, SIGMA_MIN, SIGMA_MAX)
    x, labels = SIGMA_MAX * _noise(16), torch.arange(16) % 3
    cond = {"labels": labels}
    out = sampling.get("consistency")(f, x, sigmas, generator=sampling.generators(0, 16), cond=cond)
    gens, manual = sampling.generators(0, 16), x
    for i in range(3):
        x0 = f(manual, sigmas[i].expand(16).float(), labels=labels)
        manual = x0 + float(sigmas[i + 1]) * sampling.randn((16, 2), gens) if i < 2 else x0
    torch.testing.assert_close(out, manual)
    one = sampling.get("consistency")(f, x, few_step_grid(1, SIGMA_MIN, SIGMA_MAX), cond=cond)
    torch.testing.assert_close(one, f(x, torch.full((16,), SIGMA_MAX), labels=labels))
    assert sampling.info("consistency").nfe(3) == 3


def test_few_step_grids_drop_the_wasted_last_level():
    assert few_step_grid(1, SIGMA_MIN, SIGMA_MAX).tolist() == [SIGMA_MAX, 0.0]
    flow = processes.get("flow")
    grid = few_step_grid(2, flow.sigma_min, flow.sigma_max, "flow", process=flow)
    assert math.isinf(grid[0]) and grid[2] == 0
    assert float(flow.t_of(grid[1])) == pytest.approx(0.5, abs=1e-3)  # t = 1, 1/2, 0
    with pytest.raises(ValueError, match="steps"):
        few_step_grid(0, SIGMA_MIN, SIGMA_MAX)


def test_shipped_two_step_mnist_model():
    """mnist_2step (configs/distill_reflow_mnist.toml): small, says how it was made, samples in 2
    Euler steps on its own grid with the jump to D, unguided, and its digits have their labels."""
    from difflab.metrics import class_accuracy

    model = difflab.load("mnist_2step")
    assert sum(f.stat().st_size for f in model.folder.iterdir()) <= 10 * 2**20
    assert model.config["training"]["command"].startswith(
        "difflab distill --config configs/distill_reflow_mnist.toml"
    )
    assert model.config["distillation"] == {
        "method": "reflow",
        "teacher": "mnist",
        "guidance": 2.0,
        "steps": 2,
    }
    labels = torch.arange(20) % 10
    with torch.no_grad():
        samples = model.generate(20, labels, seed=0)
    assert samples.nfe == samples.network_evals == 2
    assert samples.sigmas.tolist() == few_step_grid(2, SIGMA_MIN, SIGMA_MAX).tolist()
    assert class_accuracy(samples.x, labels) >= 0.9
