"""Reward and preference fine-tuning (issue 22): every method against the exact KL-regularized
optimum on a Gaussian mixture, and on MNIST sampled without a label.

    DIFFLAB_DATA=../shared/data .venv/bin/python benchmarks/finetune.py            # the record
    DIFFLAB_DATA=../shared/data .venv/bin/python benchmarks/finetune.py --quick    # a few minutes

Exact mixtures: the shipped 8gaussians model (an MLP trained on difflab.data.toys.mixture
("8gaussians")) fine-tuned by configs/finetune_mixture_{method}.toml toward r(x) = x_1 at beta 1,
whose optimum p*(x) = p(x) exp(r(x) / beta) / Z is difflab.testing.tilted(p, r, beta) in closed form
(Diffusion-DPO's Bradley-Terry optimum is the same mixture). At log-spaced training steps (0: the
base) --n samples of the method's own chain (its sampler, grid and noise, fixed seeds) are scored:
mean reward against E_p*[r] = mean_reward(p*, r); sliced W2 (256 directions) to --n exact samples of
p* beside the floor of two sets of exact samples; the mean log-likelihood log p*(x) beside that of
p*'s own samples. Targets: mean reward within 5 % of E_p*[r], sliced W2 at most 0.25 of the base's.
Writes --plot (sliced W2 to p* and the relative reward gap against steps, one line per method).

MNIST: the shipped class-conditional mnist model sampled without a label (its null class) fine-tuned
by configs/finetune_mnist_{method}.toml with each --rewards (classifier:K, log p(K | x) under the
shipped classifier, whose optimum at beta 1 is p(x | K); ink, mean pixel intensity). Before / after
(the base, and the fine-tuned model, both through the fine-tuning chain without a label): mean
reward, Fréchet distance (classifier features, difflab.metrics) to the MNIST test split, the share of
samples the classifier assigns to K, and for classifier:K the FD to the test split's digit-K images
beside that of the base's own class-conditional samples of K (guidance 1, the same chain). Targets:
share of K >= 0.9; FD to digit K <= 2x the base's class-conditional samples'; DDPO and DPO within 30
minutes of 2 CPU cores. Wall time: training alone (the measurements excluded).

Tables go to stdout as markdown; --json writes every number. Runs train in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

import difflab
from difflab import data, sampling
from difflab.core.conditioning import NULL_LABEL
from difflab.data.toys import mixture
from difflab.finetune import FinetuneTask
from difflab.metrics import frechet_distance, mnist_features
from difflab.testing import LinearReward, mean_reward, sliced_w2, tilted
from difflab.training.loop import run
from difflab.utils.charts import log_x_chart
from difflab.utils.images import panels, save_png

METHODS = ("ddpo", "dpok", "draft", "dpo", "d3po")
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
REWARD, BETA = LinearReward(torch.tensor([1.0, 0.0], dtype=torch.float64)), 1.0  # the configs'
QUICK = {  # --quick: budgets small enough for a few minutes on 2 cores
    "steps": 100,
    "n": 1000,
    "mnist_steps": 3,
    "mnist_n": 64,
    "mnist_methods": ["ddpo", "draft"],
    "mnist_overrides": ["sample.batch=8", "optim.batch_size=8", "dpo:method.pairs=16"],
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def draw(task: FinetuneTask, denoiser: Any, n: int, seed: int, label: int | None) -> Tensor:
    """n samples of the task's chain (its sampler, grid and options) under ``denoiser``, sample i
    from generator (seed, i), in chunks of 250; ``label`` for every sample, or None."""
    gens = sampling.generators(seed, n)
    weight = next(task.model.network.parameters())
    start, sampler = float(task.sigmas[0]), sampling.get(task.sampler)
    out = []
    with torch.no_grad():
        for lo in range(0, n, 250):
            g = gens[lo : lo + 250]
            x = sampling.randn((len(g), *task.shape), g, weight.dtype, weight.device)
            x = x * start if math.isfinite(start) else x
            cond = (
                {} if label is None else {"labels": torch.full((len(g),), label).to(weight.device)}
            )
            out.append(sampler(denoiser, x, task.sigmas, generator=g, cond=cond, **task.options))
    return torch.cat(out).cpu()


def chain_label(task: FinetuneTask) -> int | None:
    """The label the task's chain samples with: the null class, a class, or None (unconditional)."""
    if not task.num_classes:
        return None
    return NULL_LABEL if task.labels == "none" else int(task.labels)


class Tracked(FinetuneTask):
    """A fine-tuning run whose model is measured by ``measure(samples)`` at the base (step 0) and
    after each step of ``at``: ``curve`` holds the records, ``measure_s`` the seconds spent."""

    def __init__(self, at: set[int], measure: Any, n: int, seed: int) -> None:
        super().__init__(difflab.load)
        self.at, self.measure, self.n, self.seed = at, measure, n, seed
        self.curve: list[dict[str, float]] = []
        self.measure_s = 0.0

    def build(self) -> torch.nn.Module:
        net = super().build()
        self._record(0, self.base)
        return net

    def evaluate(self, step: int) -> dict[str, float]:
        if step in self.at:
            self._record(step, self.policy(self.trainer.ema.model))
        return {}

    def _record(self, step: int, denoiser: Any) -> None:
        begin = time.perf_counter()
        x = draw(self, denoiser, self.n, self.seed, chain_label(self))
        self.curve.append({"step": step, **self.measure(x)})
        self.measure_s += time.perf_counter() - begin


def train(
    task: FinetuneTask, config: Path, overrides: list[str], folder: Path
) -> tuple[Any, float]:
    """The finished trainer of a fresh run and its wall seconds; SystemExit when it was interrupted
    (SIGINT / SIGTERM: the loop stops at a step)."""
    begin = time.perf_counter()
    trainer = run(task, config, overrides, folder, resume=False, progress=False)
    if not trainer.finished:
        raise SystemExit(f"interrupted at step {trainer.step} of {folder.name}")
    return trainer, time.perf_counter() - begin


def log_steps(steps: int, count: int = 12) -> set[int]:
    """About ``count`` log-spaced steps in 1..steps, steps included."""
    return {round(float(v)) for v in np.geomspace(1, steps, count)} | {steps}


# ---------------------------------------------------------------- exact mixtures


def bench_mixture(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    p = mixture("8gaussians")
    optimum = tilted(p, REWARD, BETA)
    target = mean_reward(optimum, REWARD)
    g = torch.Generator().manual_seed(args.seed)
    exact, again = optimum.sample(args.n, g), optimum.sample(args.n, g)
    w2_seed = args.seed + 1

    def w2(x: Tensor) -> float:
        return sliced_w2(x, exact, 256, torch.Generator().manual_seed(w2_seed))

    def measure(x: Tensor) -> dict[str, float]:
        x = x.double()
        return {
            "reward": float(REWARD(x).mean()),
            "sliced_w2": w2(x),
            "log_lik": float(optimum.log_prob(x).mean()),
        }

    result: dict[str, Any] = {
        "target_reward": target,
        "floor_sliced_w2": w2(again),
        "exact_log_lik": float(optimum.log_prob(again).mean()),
        "n": args.n,
        "methods": {},
    }
    for method in args.methods:
        config = CONFIGS / f"finetune_mixture_{method}.toml"
        steps = args.steps or config_steps(config)
        task = Tracked(log_steps(steps), measure, args.n, args.seed + 2)
        overrides = [f"run.steps={steps}", "run.eval_every=0", "run.tensorboard=false"]
        log(f"mixture: {method}, {steps} steps")
        _, seconds = train(task, config, overrides, root / f"mixture_{method}")
        result["methods"][method] = {
            "steps": steps,
            "train_s": seconds - task.measure_s,
            "curve": task.curve,
        }
    return result


def config_steps(path: Path) -> int:
    """run.steps of a config file: the method's own budget."""
    return int(tomllib.loads(path.read_text())["run"]["steps"])


def mixture_table(r: dict[str, Any]) -> str:
    target, floor = r["target_reward"], r["floor_sliced_w2"]
    lines = [
        f"Exact optimum p* = tilted(8gaussians, r = x_1, beta {BETA:g}): E_p*[r] = {target:.4f}; "
        f"{r['n']} samples per point; two sets of exact samples of p* are {floor:.4f} apart in "
        f"sliced W2; p*'s own samples have mean log p* = {r['exact_log_lik']:.4f}.",
        "",
        "| method | steps | mean reward (base -> final) | within 5 % | sliced W2 to p* (base -> "
        "final) | / base (target <= 0.25) | mean log p* | train s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method, m in r["methods"].items():
        base, last = m["curve"][0], m["curve"][-1]
        ratio = last["sliced_w2"] / base["sliced_w2"]
        close = abs(last["reward"] - target) <= 0.05 * abs(target)
        lines.append(
            f"| {method} | {m['steps']} | {base['reward']:.4f} -> {last['reward']:.4f} | "
            f"{'yes' if close else 'no'} | {base['sliced_w2']:.4f} -> {last['sliced_w2']:.4f} | "
            f"{ratio:.3f} {'yes' if ratio <= 0.25 else 'no'} | {last['log_lik']:.4f} | "
            f"{m['train_s']:.1f} |"
        )
    return "\n".join(lines)


def plot_mixture(r: dict[str, Any], path: Path) -> None:
    """Sliced W2 to p* and |E r - E_p* r| / E_p* r against training steps (log x), one line per
    method, side by side."""
    target, methods = r["target_reward"], r["methods"]
    w2 = {
        k: [(c["step"], c["sliced_w2"]) for c in m["curve"] if c["step"]]
        for k, m in methods.items()
    }
    last = max(s for v in w2.values() for s, _ in v)
    w2["exact samples (floor)"] = [(1, r["floor_sliced_w2"]), (last, r["floor_sliced_w2"])]
    gap = {
        k: [(c["step"], abs(c["reward"] - target) / abs(target)) for c in m["curve"] if c["step"]]
        for k, m in methods.items()
    }
    charts = [
        (
            "sliced W2 to the exact optimum p*",
            log_x_chart(w2, x_label="steps", y_label="sliced W2"),
        ),
        (
            "mean reward's distance to p*'s",
            log_x_chart(gap, x_label="steps", y_label="|E r - E_p* r| / E_p* r"),
        ),
    ]
    caption = (
        f"8gaussians fine-tuned toward r = x_1 at beta {BETA:g} (E_p*[r] = {target:.3f}); "
        f"{r['n']} samples of each method's chain per point"
    )
    save_png(panels([(t, np.asarray(c)) for t, c in charts], caption), path)


# ---------------------------------------------------------------- MNIST


class MnistScorer:
    """Scores of MNIST samples: reward, FD to the test split, the classifier's share of class K and
    FD to the test split's digit-K images."""

    def __init__(self) -> None:
        test = data.load("mnist", "test")
        self.labels = test.labels
        self.features = mnist_features(test.x)[0]

    def __call__(self, x: Tensor, reward: Any, k: int | None) -> dict[str, float]:
        feats, logits = mnist_features(x)
        out = {
            "reward": float(reward(x).double().mean()),
            "fd": frechet_distance(feats, self.features),
        }
        if k is not None:
            out["share_k"] = float((logits.argmax(1) == k).double().mean())
            out["fd_k"] = frechet_distance(feats, self.features[self.labels == k])
        return out


def method_overrides(overrides: list[str], method: str) -> list[str]:
    """The key=value overrides that apply to ``method``: all but those written METHOD:key=value
    for another method."""
    out = []
    for o in overrides:
        head, sep, rest = o.partition(":")
        if not sep or "=" in head:
            out.append(o)
        elif head == method:
            out.append(rest)
    return out


def reward_class(name: str) -> int | None:
    """K of a reward classifier:K, else None."""
    head, _, k = name.partition(":")
    return int(k) if head == "classifier" and k.isdecimal() else None


def bench_mnist(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    scorer, rows = MnistScorer(), []
    base_samples: dict[Any, Tensor] = {}  # keyed by the chain
    cond_fd: dict[int, float] = {}
    for reward in args.rewards:
        k = reward_class(reward)
        for method in args.mnist_methods:
            config = CONFIGS / f"finetune_mnist_{method}.toml"
            overrides = [f"reward.name={reward}", f"run.threads={args.threads}"]
            overrides += ["run.eval_every=0", "run.tensorboard=false"]
            overrides += [f"run.steps={args.mnist_steps}"] if args.mnist_steps else []
            overrides += method_overrides(args.mnist_overrides, method)
            log(f"mnist: {method} toward {reward}")
            task = FinetuneTask(difflab.load)
            trainer, seconds = train(task, config, overrides, root / f"mnist_{method}_{reward}")
            chain = (task.sampler, tuple(task.sigmas.tolist()), repr(task.options), task.labels)
            label = chain_label(task)
            if chain not in base_samples:
                base_samples[chain] = draw(task, task.base, args.mnist_n, args.seed, label)
            if k is not None and k not in cond_fd:
                x_k = draw(task, task.base, args.mnist_n, args.seed, k)
                cond_fd[k] = scorer(x_k, task.reward, k)["fd_k"]
            after = draw(task, task.policy(trainer.ema.model), args.mnist_n, args.seed, label)
            rows.append(
                {
                    "reward": reward,
                    "method": method,
                    "steps": trainer.step,
                    "before": scorer(base_samples[chain], task.reward, k),
                    "after": scorer(after, task.reward, k),
                    "base_conditional_fd_k": cond_fd.get(k, math.nan),
                    "train_s": seconds,
                }
            )
    return {"n": args.mnist_n, "rows": rows}


def mnist_table(r: dict[str, Any]) -> str:
    lines = [
        f"{r['n']} samples per model, without a label, through the fine-tuning chain.",
        "",
        "| reward | method | steps | reward before -> after | FD to MNIST before -> after | "
        "share of K before -> after (target >= 0.9) | FD to digit K after (base's K samples; "
        "target <= 2x) | train s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in r["rows"]:
        b, a = row["before"], row["after"]
        share = fd_k = "-"
        if "share_k" in a:
            share = f"{b['share_k']:.3f} -> {a['share_k']:.3f}"
            fd_k = f"{a['fd_k']:.3g} ({row['base_conditional_fd_k']:.3g})"
        lines.append(
            f"| {row['reward']} | {row['method']} | {row['steps']} | {b['reward']:.4f} -> "
            f"{a['reward']:.4f} | {b['fd']:.3g} -> {a['fd']:.3g} | {share} | {fd_k} | "
            f"{row['train_s']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small budgets: " + json.dumps(QUICK))
    p.add_argument("--parts", nargs="+", choices=("mixture", "mnist"), default=["mixture", "mnist"])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--steps", type=int, default=0, help="mixture steps (0: each config's)")
    p.add_argument("--n", type=int, default=4000, help="mixture samples per measurement")
    p.add_argument("--mnist-methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--rewards", nargs="+", default=["classifier:3", "ink"])
    p.add_argument("--mnist-steps", type=int, default=0, help="MNIST steps (0: each config's)")
    p.add_argument("--mnist-n", type=int, default=1000, help="MNIST samples per model")
    p.add_argument(
        "--mnist-overrides",
        nargs="*",
        default=[],
        help="key=value for every MNIST run, METHOD:key=value for one method's",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="MNIST runs' torch threads")
    p.add_argument("--plot", type=Path, default=None, help="default docs/finetune_mixture.png")
    p.add_argument("--json", type=Path, default=None, help="also write every number here")
    args = p.parse_args()
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    args.plot = args.plot or Path(
        "runs/bench_finetune_quick.png" if args.quick else "docs/finetune_mixture.png"
    )
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory(prefix="bench_finetune_") as tmp:
        if "mixture" in args.parts:
            results["mixture"] = bench_mixture(args, Path(tmp))
            print("## Exact mixture\n\n" + mixture_table(results["mixture"]) + "\n")
            args.plot.parent.mkdir(parents=True, exist_ok=True)
            plot_mixture(results["mixture"], args.plot)
            print(f"wrote {args.plot}\n")
        if "mnist" in args.parts:
            results["mnist"] = bench_mnist(args, Path(tmp))
            print("## MNIST without a label\n\n" + mnist_table(results["mnist"]) + "\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
