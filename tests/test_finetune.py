"""Reward and preference fine-tuning (difflab.finetune): each method's loss against hand
computations (PPO's ratio, DRaFT's gradient, Diffusion-DPO's loss), each method on the shipped
8gaussians model, whose data is an exact Gaussian mixture, moving the mean reward of a linear reward
toward that of the exact KL-regularized optimum tilted(p, r, beta), LoRA adapters that load and merge
to the same model, and bad input refused in one line with the base model untouched."""

import hashlib
import json
import math

import pytest
import torch
from torch.func import functional_call

import difflab
from difflab import models
from difflab.cli import main
from difflab.core.parameterization import Parameterization
from difflab.data.toys import mixture
from difflab.finetune import FinetuneTask, finetune, method_config
from difflab.finetune.ddpo import kl_penalized_reward, ppo_loss
from difflab.finetune.dpo import diffusion_dpo_loss, elbo_weight
from difflab.finetune.draft import truncated
from difflab.finetune.kl import step_kl, transition_means
from difflab.models.lora import add_lora, save_adapter
from difflab.sampling import trajectory
from difflab.testing import LinearReward, mean_reward, tilted

REWARD = LinearReward(torch.tensor([1.0, 0.0]))
BASE = "8gaussians"


def config(method, steps, **options):
    """A short run on the shipped 8gaussians model (an MLP on the exact 8-mode mixture)."""
    return {
        "run": {"steps": steps, "log_every": 1, "checkpoint_every": 10_000, "threads": 1},
        "base": {"model": BASE},
        "reward": {"name": "linear:1,0"},
        "method": {"name": method, "beta": 1.0, **options},
        "sample": {"sampler": "ddim_eta", "steps": 10, "batch": 64},
        "optim": {"lr": 1e-3, "batch_size": 16},
    }


def records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


def model_reward(model, n=1000):
    """E[r] of the model's samples under the fine-tuning MDP's sampler."""
    x = model.sample(n, seed=1, sampler="ddim_eta", steps=10)
    return float(REWARD(x.double()).mean())


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


# ---------------------------------------------------------------- the losses, by hand


def test_ppo_loss_is_the_clipped_surrogate():
    """max(-A rho, -A clip(rho)) over the stochastic steps; rho = 1 gives -A; the KL-penalized
    reward subtracts beta times the chain's log-ratio."""
    old = torch.tensor([[0.0, 0.0], [-1.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    new = old + torch.tensor([[0.0, 0.0], [0.5, -0.5], [0.0, 0.0]], dtype=torch.float64)
    adv = torch.tensor([1.0, -2.0], dtype=torch.float64)
    stochastic = torch.tensor([False, True, False])
    rho = math.exp(0.5), math.exp(-0.5)
    expected = [max(-1 * rho[0], -1 * min(rho[0], 1.2)), max(2 * rho[1], 2 * max(rho[1], 0.8))]
    assert torch.allclose(ppo_loss(new, old, adv, 0.2, stochastic), torch.tensor(expected).double())
    assert torch.equal(ppo_loss(old, old, adv, 0.2, stochastic), -adv)
    r = torch.tensor([1.0, 2.0])
    penalized = kl_penalized_reward(r, new, old, 0.5)
    assert torch.allclose(penalized, torch.tensor([1.0 - 0.25, 2.0 + 0.25]).double())


def test_ppo_ratio_is_one_at_the_first_update(tmp_path):
    """DDPO re-scores the round it just sampled under the same network: every ratio is 1 at the
    first update of a round, and no longer at the second (inner epoch 2)."""
    cfg = config("ddpo", 2, inner_epochs=2)
    cfg["sample"]["batch"] = cfg["optim"]["batch_size"] = 32
    finetune(difflab.load, cfg, run_dir=tmp_path, progress=False)
    first, second = records(tmp_path)
    assert first["ratio"] == pytest.approx(1.0, abs=1e-6)
    assert abs(second["ratio"] - 1.0) > 1e-4


def tiny_denoiser():
    torch.manual_seed(0)
    net = models.build({"type": "mlp", "dim": 2, "width": 8, "depth": 1}).double()
    return net, Parameterization("vp_cosine", "eps").denoiser(net)


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("use_checkpoint", [True, False])
def test_draft_gradient_matches_finite_differences(k, use_checkpoint):
    """d r(x_N) / d theta through the last K of 5 ddim_eta steps (fixed noise) equals the central
    difference of r(x_N) when theta moves in the denoiser calls of those K steps only (all steps
    for K = N), along a random direction, in float64."""
    _, den = tiny_denoiser()
    sigmas = torch.tensor([20.0, 5.0, 1.0, 0.3, 0.05, 0.0], dtype=torch.float64)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 20
    sigma_from = float(sigmas[5 - k])
    params = {n: p.detach().clone() for n, p in den.named_parameters()}
    g = torch.Generator().manual_seed(2)
    v = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in params.items()}

    def run(denoiser):
        gens = [torch.Generator().manual_seed(10 + i) for i in range(4)]
        traj = trajectory("ddim_eta", denoiser, x, sigmas, generator=gens)
        return REWARD(traj.xs[-1]).sum()

    loss = run(truncated(den, sigma_from, use_checkpoint))
    grads = torch.autograd.grad(loss, list(den.parameters()))
    analytic = sum((gr * v[n]).sum() for gr, n in zip(grads, params))

    def moved(h):
        shifted = {n: p + h * v[n] for n, p in params.items()}

        def call(x, sigma, **cond):
            late = float(torch.as_tensor(sigma).max()) <= sigma_from * (1 + 1e-6)
            with torch.no_grad():
                return functional_call(den, shifted if late else params, (x, sigma))

        return float(run(call))

    h = 1e-5
    numeric = (moved(h) - moved(-h)) / (2 * h)
    assert float(analytic) == pytest.approx(numeric, rel=1e-5, abs=1e-8)


def test_transition_means_give_the_gaussian_kl():
    """Replayed means under the sampling denoiser are the recorded ones, and the step KL of two
    Gaussians of one std is ||m - m'||^2 / (2 s^2), 0 on the deterministic last step."""
    _, den = tiny_denoiser()
    sigmas = torch.tensor([20.0, 5.0, 1.0, 0.0], dtype=torch.float64)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 20
    with torch.no_grad():
        traj = trajectory("ddpm", den, x, sigmas, generator=torch.Generator().manual_seed(3))
        same = transition_means("ddpm", den, traj)
        other = transition_means("ddpm", lambda x, s: 0.9 * den(x, s), traj)
    assert torch.allclose(same[:2], traj.means[:2], rtol=0, atol=1e-12)
    kl = step_kl(same, other, traj.stds)
    expected = (same - other).square().sum(-1)[:2] / (2 * traj.stds[:2, None] ** 2)
    assert torch.allclose(kl[:2], expected) and torch.equal(kl[2], torch.zeros(3).double())


def test_diffusion_dpo_loss_by_hand():
    """-log sigmoid(-beta T w ((e_w - e_ref_w) - (e_l - e_ref_l))) on fixed numbers; log 2 when the
    policy is the reference; T w = log(sigma_max / sigma_min)."""
    e_w, r_w = torch.tensor([1.0, 0.2]), torch.tensor([1.5, 0.2])
    e_l, r_l = torch.tensor([2.0, 0.7]), torch.tensor([1.0, 0.3])
    loss = diffusion_dpo_loss(e_w, r_w, e_l, r_l, beta=0.5, weight=2.0)
    inside = [-0.5 * 2.0 * ((1.0 - 1.5) - (2.0 - 1.0)), -0.5 * 2.0 * ((0.2 - 0.2) - (0.7 - 0.3))]
    expected = [math.log1p(math.exp(-z)) for z in inside]
    assert torch.allclose(loss.double(), torch.tensor(expected).double(), atol=1e-6)
    assert torch.allclose(
        diffusion_dpo_loss(e_w, e_w, e_l, e_l, 3.0, 7.0), torch.full((2,), math.log(2))
    )
    assert elbo_weight(0.01, 100.0) == pytest.approx(math.log(1e4))


def test_dpo_starts_at_log_2(tmp_path):
    """The first Diffusion-DPO step scores the base against itself: loss log 2 exactly (float32)."""
    cfg = config("dpo", 1, pairs=32)
    finetune(difflab.load, cfg, run_dir=tmp_path, progress=False)
    assert records(tmp_path)[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert (tmp_path / "pairs.safetensors").is_file()


# ---------------------------------------------------------------- toward the exact optimum

# (method, steps, [method] options, other sections' options): short runs; the benchmark runs them
# to convergence. D3PO's per-step log-ratios are stiff at the nearly noise-free last steps: its
# grid stops at sigma 0.05
RUNS = [
    ("ddpo", 100, {}, {}),
    ("dpok", 100, {}, {}),
    ("draft", 40, {"k": 10}, {}),
    ("d3po", 100, {}, {"sample": {"sigma_min": 0.05}}),
    ("dpo", 400, {"pairs": 512}, {"optim": {"batch_size": 64}}),
]
START = {}  # the base model's mean reward, measured once


@pytest.mark.parametrize("method, steps, options, sections", RUNS, ids=[r[0] for r in RUNS])
def test_method_moves_the_mean_reward_toward_the_exact_optimum(
    tmp_path, method, steps, options, sections
):
    """r(x) = x_1 on the 8-mode mixture, beta = 1: the exact optimum's mean reward is 0.82 against
    the base's 0; a short run covers at least a fifth of the way and does not overshoot."""
    p, base = mixture(BASE), difflab.load(BASE)
    target = mean_reward(tilted(p, REWARD, 1.0), REWARD)
    start = START.setdefault("start", model_reward(base))
    cfg = config(method, steps, **options)
    for section, values in sections.items():
        cfg[section].update(values)
    trainer = finetune(base, cfg, run_dir=tmp_path, progress=False)
    after = model_reward(difflab.load(trainer.exported[0]))
    assert target == pytest.approx(0.822, abs=1e-3) and abs(start) < 0.1
    assert start + 0.2 * (target - start) < after < target + 0.3, (method, after)


# ---------------------------------------------------------------- LoRA, export, bad input


def test_lora_adapter_loads_and_merges_to_the_trained_model(tmp_path):
    """lora.rank 4: model/ is an adapter folder (LoRA factors, base name and digest) that
    difflab.load opens on its base; it and model_merged/ denoise as the unmerged trained network;
    the base model folder is byte for byte the same."""
    base_folder = difflab.load(BASE).folder
    before = digest(base_folder)
    cfg = config("ddpo", 2)
    cfg["lora"] = {"rank": 4, "merge": True}
    trainer = finetune(difflab.load, cfg, run_dir=tmp_path, progress=False)
    assert trainer.exported == [tmp_path / "model", tmp_path / "model_merged"]
    adapter = json.loads((tmp_path / "model" / "config.json").read_text())
    assert adapter["type"] == "adapter" and adapter["base"]["model"] == BASE
    assert adapter["finetune"]["method"]["name"] == "ddpo"
    trained = trainer.task.policy(trainer.ema.model)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    sigma = torch.logspace(-2, 1.5, 64)
    with torch.no_grad():
        reference = trained(x, sigma)
        for folder in ("model", "model_merged", ""):  # "": the run folder opens its model/
            out = difflab.load(tmp_path / folder).denoiser(x, sigma)
            assert torch.allclose(out, reference, atol=1e-5), folder
        assert not torch.allclose(difflab.load(BASE).denoiser(x, sigma), reference, atol=1e-5)
    assert digest(base_folder) == before


def test_bad_input_is_one_line_and_the_base_is_untouched(tmp_path):
    """Unknown reward or method, a reward returning NaN and an adapter for another base model are
    one-line ValueErrors from Python and exit status 2 from the command line."""
    base_folder = difflab.load(BASE).folder
    before = digest(base_folder)
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        finetune(difflab.load, config("ddpo", 1) | {"reward": {"name": "nope"}}, progress=False)
    with pytest.raises(ValueError, match="unknown fine-tuning method 'ppo'"):
        method_config({"name": "ppo"})
    with pytest.raises(ValueError, match=r"reward '<lambda>'.*NaN"):
        finetune(
            difflab.load,
            config("ddpo", 1),
            run_dir=tmp_path / "nan",
            progress=False,
            reward=lambda x: x[:, 0] * float("nan"),
        )
    other = models.build({"type": "mlp", "dim": 2, "width": 16, "depth": 1})
    add_lora(other, 2)
    save_adapter(tmp_path / "other", other, base="elsewhere")
    bad_lora = config("ddpo", 1) | {"lora": {"init": str(tmp_path / "other")}}
    with pytest.raises(ValueError, match="is an adapter for base model 'elsewhere'"):
        finetune(difflab.load, bad_lora, run_dir=tmp_path / "lora", progress=False)
    assert digest(base_folder) == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", BASE, "--method", "ddpo", "--reward", "nope"], "unknown reward 'nope'"),
        (["--model", BASE, "--method", "ppo", "--reward", "ink"], "unknown fine-tuning method"),
        (["--model", BASE, "--method", "ddpo"], "give --config, or --method and --reward"),
        (
            ["--model", BASE, "--method", "ddpo", "--reward", "ink", "sample.sampler=heun"],
            "unknown sampler of the fine-tuning MDP",
        ),
    ],
)
def test_cli_errors_exit_2_with_one_line(tmp_path, capsys, args, message):
    status = main(["finetune", *args, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and message in err and "\n" not in err


def test_an_adapter_for_another_base_exits_2_from_sample_and_finetune(tmp_path, capsys):
    """An adapter folder naming 8gaussians but made on other weights: `difflab sample` and
    `difflab finetune lora.init=...` refuse it in one line, exit status 2."""
    other = models.build({"type": "mlp", "dim": 2, "width": 128, "depth": 3})
    add_lora(other, 2)
    save_adapter(tmp_path / "other", other, base=BASE)
    commands = [
        ["sample", "--model", str(tmp_path / "other"), "--n", "4", "--out", str(tmp_path / "s.npz")],
        ["finetune", "--model", BASE, "--method", "ddpo", "--reward", "linear:1,0",
         f"lora.init={tmp_path / 'other'}", "--out", str(tmp_path / "run")],
    ]  # fmt: skip
    for command in commands:
        status = main(command)
        err = capsys.readouterr().err.strip()
        assert status == 2 and "is an adapter for base model '8gaussians'" in err, err
        assert "\n" not in err
    assert not (tmp_path / "s.npz").exists() and not (tmp_path / "run" / "model").exists()


def test_cli_runs_a_config_and_the_result_samples(tmp_path, capsys):
    """difflab finetune --config ... writes model/ that difflab sample --model DIR loads."""
    cfg = tmp_path / "ft.toml"
    cfg.write_text(
        '[base]\nmodel = "8gaussians"\n[reward]\nname = "linear:1,0"\n[method]\nname = "dpok"\n'
        "[run]\nsteps = 2\nthreads = 1\n[sample]\nsteps = 5\nbatch = 16\n"
    )
    assert main(["finetune", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 0
    assert "wrote" in capsys.readouterr().out
    out = tmp_path / "s.npz"
    assert main(["sample", "--model", str(tmp_path / "run"), "--n", "8", "--out", str(out)]) == 0
    assert out.is_file()


def test_task_is_the_one_loop():
    """Fine-tuning is a Task of the one training loop, nothing else."""
    from difflab.training.loop import Task

    assert issubclass(FinetuneTask, Task)
    assert FinetuneTask.cli == ("difflab", "finetune")
