"""Masked diffusion language models on tiny Shakespeare: held-out bits per character and, for each
sampler and step count, speed and generative perplexity under the autoregressive judge.

Models: the shipped ``shakespeare`` (masked diffusion, MDLM ELBO, time-agnostic transformer) and
``shakespeare_ar`` (a causal transformer of the same size on the same data: the baseline and the
judge). Bits/char: the last 10 % of the text (never trained on) cut into windows of the context
length; the masked model's number is its negative ELBO (an upper bound on -log2 p) averaged over
``--draws`` draws of (t, z_t) per window, the AR model's is exact.

Samplers (``difflab.text.samplers``), each from all masks, n samples of the full context length,
seed 0, one thread: tokens/s = n * L / CPU seconds of the sampling call (CPU time, the trustworthy
number on a shared machine; wall time beside it), NFE = network rows evaluated per sample, gen PPL =
exp(mean judge NLL per character) with its standard error from the spread over samples, entropy =
unigram entropy of the sampled characters in bits (held-out text: the "data" row). Ancestral runs
at 64, 256, 1024, ... steps until its generative perplexity matches first-hitting's at L steps
(within two standard errors), and at least to 4096; without caching it produces the same samples
as with it (tests/test_text.py), so it is only timed (on the same n samples, up to
``--uncached-max`` steps; every uncached step costs the same, so longer runs are that time per step
times their steps, and say so). The target: first-hitting at L steps at least 10x the tokens/s of
ancestral where ancestral matches it.

    .venv/bin/python benchmarks/text.py             # ~15 min of one core (n=16)
    .venv/bin/python benchmarks/text.py --quick     # ~5 min: fewer samples and step counts
    .venv/bin/python benchmarks/text.py --sections float32   # 20 s: the float32 truncation table
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from difflab.text import load, shakespeare
from difflab.text.categorical import float32_tail_probability
from difflab.text.metrics import bits_per_token, unigram_entropy
from difflab.text.model import TextModel


def judge_scores(judge: TextModel, tokens: torch.Tensor) -> tuple[float, float]:
    """Generative perplexity and its standard error (delta method over per-sample mean NLLs)."""
    nll = torch.cat([judge.nll(x) for x in tokens.split(64)]) / tokens.shape[1]
    se = float(nll.std()) / math.sqrt(len(nll)) if len(nll) > 1 else 0.0
    ppl = math.exp(float(nll.mean()))
    return ppl, ppl * se


def timed(model: TextModel, n: int, name: str, steps: int, **options) -> tuple[torch.Tensor, dict]:
    cpu, wall = time.process_time(), time.perf_counter()
    out = model.generate(n, sampler=name, steps=steps, seed=0, batch_size=n, **options)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    tokens = n * model.context
    return out.tokens, {
        "nfe": out.network_rows / n,
        "tok_cpu": tokens / cpu,
        "tok_wall": tokens / wall,
    }


SECTIONS = ("float32", "bits", "samplers")


def float32_table() -> None:
    """The exact probability that float32 Gumbel-max draws any of n tail categories gap below the
    head (every float32 uniform enumerated), against the target, as an effective temperature."""
    print("## float32 Gumbel-max: exact tail probability (every float32 uniform enumerated)\n")
    print("| tail categories n | logit gap | target | float32 | ratio | effective temperature |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n, gap in (
        (2**10, 12.0),
        (2**20, 14.0),
        (2**20, 16.0),
        (2**20, 17.0),
        (2**20, 18.0),
        (2**24, 17.0),
    ):
        p32 = float32_tail_probability(n, gap)
        target = n * math.exp(-gap) / (1 + n * math.exp(-gap))
        t_eff = gap / math.log(n * (1 - p32) / p32)
        print(
            f"| 2^{int(math.log2(n))} | {gap:g} | {target:.5f} | {p32:.5f} | {p32 / target:.3f} | {t_eff:.3f} |"
        )
    print(flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shakespeare")
    p.add_argument("--judge", default="shakespeare_ar")
    p.add_argument("--n", type=int, default=16, help="samples per sampler setting")
    p.add_argument("--draws", type=int, default=2, help="ELBO draws per held-out window")
    p.add_argument("--windows", type=int, default=0, help="held-out windows (0: all)")
    p.add_argument(
        "--uncached-max", type=int, default=1024, help="longest uncached ancestral run timed"
    )
    p.add_argument("--quick", action="store_true", help="n=8, ancestral only up to 1024 steps")
    p.add_argument(
        "--sections",
        nargs="+",
        default=list(SECTIONS),
        choices=SECTIONS,
        help="which tables: held-out bits, samplers, the float32 Gumbel truncation",
    )
    args = p.parse_args()
    torch.set_num_threads(1)
    if "float32" in args.sections:
        float32_table()
    if "bits" not in args.sections and "samplers" not in args.sections:
        return
    model, judge = load(args.model), load(args.judge)
    length = model.context
    n = 8 if args.quick else args.n

    val, _ = shakespeare("val")
    windows = val.windows(length)
    if args.windows:
        windows = windows[: args.windows]
    if "bits" in args.sections:
        print(
            f"## Held-out bits per character ({len(windows)} windows of {length}, last 10 % of "
            "the text)\n"
        )
        print("| model | parameters | bits/char | ± se |\n|---|---:|---:|---:|")
        for m, what in (
            (model, f"masked diffusion, NELBO, {args.draws} draws/window"),
            (judge, "autoregressive, exact"),
        ):
            bits, se = bits_per_token(m, windows, draws=args.draws)
            params = sum(q.numel() for q in m.network.parameters())
            print(f"| {m.name} ({what}) | {params:,} | {bits:.4f} | {se:.4f} |", flush=True)
    if "samplers" not in args.sections:
        return

    settings = [(name, s, {}) for name in ("first_hitting", "confidence") for s in (64, length)]
    settings += [("semi_ar", s, {"block": 32}) for s in (64, length)]

    print(f"\n## Samplers ({n} samples of {length} characters, seed 0, one thread)\n")
    print(
        "| sampler | steps | NFE/sample | tokens/s (CPU) | tokens/s (wall) | gen PPL | ± se "
        "| entropy (bits) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    data = windows[torch.randperm(len(windows), generator=torch.Generator().manual_seed(0))[:n]]
    ppl, se = judge_scores(judge, data)
    entropy = unigram_entropy(data, model.vocab_size)
    print(f"| held-out text | | | | | {ppl:.3f} | {se:.3f} | {entropy:.3f} |", flush=True)
    results = {}

    def row(label: str, name: str, steps: int, **options) -> tuple[float, float, dict]:
        tokens, speed = timed(model, n, name, steps, **options)
        ppl, se = judge_scores(judge, tokens)
        entropy = unigram_entropy(tokens, model.vocab_size)
        print(
            f"| {label} | {steps} | {speed['nfe']:.0f} | {speed['tok_cpu']:.1f} | "
            f"{speed['tok_wall']:.1f} | {ppl:.3f} | {se:.3f} | {entropy:.3f} |",
            flush=True,
        )
        results[(label, steps)] = (ppl, se, speed)
        return results[(label, steps)]

    for name, steps, options in settings:
        label = name + (f" (block {options['block']}, first_hitting)" if name == "semi_ar" else "")
        row(label, name, steps, **options)
    fhs_ppl, fhs_se, fhs = results[("first_hitting", length)]

    # ancestral at growing step counts until its generative perplexity matches first-hitting's
    match = None
    for steps in (64, 256, 1024, 4096, 16384)[1 if args.quick else 0 :]:
        ppl, se, _ = row("ancestral", "ancestral", steps)
        if match is None and abs(ppl - fhs_ppl) <= 2 * math.hypot(se, fhs_se):
            match = steps
        if match is not None and steps >= max(match, 4096 if not args.quick else 1024):
            break
    top = steps
    row("ancestral float32", "ancestral", top, dtype=torch.float32)
    ancestral = sorted(s for label, s in results if label == "ancestral")
    uncached = {}
    for steps in ancestral:
        # every uncached step costs the same (one network call and one categorical draw for the
        # batch), so beyond --uncached-max steps the time is that of the last timed run per step
        timed_steps = min(steps, max(s for s in ancestral if s <= args.uncached_max))
        if timed_steps == steps:
            _, uncached[steps] = timed(model, n, "ancestral", steps, cache=False)
        else:
            per = uncached[timed_steps]
            uncached[steps] = {
                k: per[k] * (timed_steps / steps if k != "nfe" else steps / timed_steps)
                for k in per
            }
        speed = uncached[steps]
        how = (
            "timed" if timed_steps == steps else f"{timed_steps}-step run's time per step x {steps}"
        )
        print(
            f"| ancestral, no cache ({how}; same samples as cached) | {steps} | "
            f"{speed['nfe']:.0f} | {speed['tok_cpu']:.1f} | {speed['tok_wall']:.1f} | | | |",
            flush=True,
        )

    print(f"\n## First-hitting ({length} steps) against ancestral: speed-up in tokens/s (CPU)\n")
    print(f"| ancestral steps | gen PPL (first-hitting: {fhs_ppl:.3f}) | cached | uncached |")
    print("|---:|---:|---:|---:|")
    for steps in ancestral:
        ppl, se, speed = results[("ancestral", steps)]
        cached = fhs["tok_cpu"] / speed["tok_cpu"]
        slow = f"{fhs['tok_cpu'] / uncached[steps]['tok_cpu']:.1f}x"
        print(f"| {steps} | {ppl:.3f} ± {se:.3f} | {cached:.1f}x | {slow} |")
    print(
        "\nTarget (first-hitting at L steps >= 10x faster than ancestral at equal generative "
        "perplexity): "
        + (
            f"ancestral first matches within two standard errors at {match} steps, where "
            f"first-hitting is {fhs['tok_cpu'] / results[('ancestral', match)][2]['tok_cpu']:.1f}x "
            "(cached) and "
            + f"{fhs['tok_cpu'] / uncached[match]['tok_cpu']:.1f}x (uncached) faster"
            if match is not None
            else f"ancestral did not match first-hitting's generative perplexity up to {top} steps"
        )
    )


if __name__ == "__main__":
    main()
