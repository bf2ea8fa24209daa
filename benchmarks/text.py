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
unigram entropy of the sampled characters in bits (held-out text: the "data" row). Ancestral
without caching produces the same samples as with it (tests/test_text.py), so it is only timed, on
``--uncached-n`` samples. The target: first-hitting at L steps at least 10x faster than ancestral at
the step count where ancestral's generative perplexity first matches it (within two standard
errors).

    .venv/bin/python benchmarks/text.py             # ~25 min on one idle core
    .venv/bin/python benchmarks/text.py --quick     # ~5 min: fewer samples and step counts
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from difflab.text import load, shakespeare
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shakespeare")
    p.add_argument("--judge", default="shakespeare_ar")
    p.add_argument("--n", type=int, default=32, help="samples per sampler setting")
    p.add_argument("--uncached-n", type=int, default=2, help="samples timed without caching")
    p.add_argument("--draws", type=int, default=4, help="ELBO draws per held-out window")
    p.add_argument("--windows", type=int, default=0, help="held-out windows (0: all)")
    p.add_argument("--quick", action="store_true", help="n=8, fewer step counts")
    args = p.parse_args()
    torch.set_num_threads(1)
    model, judge = load(args.model), load(args.judge)
    length = model.context
    n = 8 if args.quick else args.n

    val, _ = shakespeare("val")
    windows = val.windows(length)
    if args.windows:
        windows = windows[: args.windows]
    print(
        f"## Held-out bits per character ({len(windows)} windows of {length}, last 10 % of the text)\n"
    )
    print("| model | parameters | bits/char | ± se |\n|---|---:|---:|---:|")
    for m, what in (
        (model, f"masked diffusion, NELBO, {args.draws} draws/window"),
        (judge, "autoregressive, exact"),
    ):
        bits, se = bits_per_token(m, windows, draws=args.draws)
        params = sum(q.numel() for q in m.network.parameters())
        print(f"| {m.name} ({what}) | {params:,} | {bits:.4f} | {se:.4f} |", flush=True)

    anc_steps = (256, 1024, 4096) if args.quick else (64, 256, 1024, 4096, 16384)
    settings = [("ancestral", s, {}) for s in anc_steps]
    settings += [("ancestral", 4096, {"dtype": torch.float32})]
    settings += [
        ("first_hitting", s, {}) for s in ((64, length) if args.quick else (32, 64, 128, length))
    ]
    settings += [("confidence", s, {}) for s in ((64,) if args.quick else (64, length))]
    settings += [("semi_ar", length, {"block": 32})]

    print(f"\n## Samplers ({n} samples of {length} characters, seed 0, one thread)\n")
    print(
        "| sampler | steps | NFE/sample | tokens/s (CPU) | tokens/s (wall) | gen PPL | ± se | entropy (bits) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    data = windows[torch.randperm(len(windows), generator=torch.Generator().manual_seed(0))[:n]]
    ppl, se = judge_scores(judge, data)
    print(
        f"| held-out text | | | | | {ppl:.3f} | {se:.3f} | {unigram_entropy(data, model.vocab_size):.3f} |",
        flush=True,
    )
    results = {}
    for name, steps, options in settings:
        tokens, speed = timed(model, n, name, steps, **options)
        ppl, se = judge_scores(judge, tokens)
        label = name + (" float32" if options.get("dtype") is torch.float32 else "")
        label += f" (block {options['block']}, first_hitting)" if name == "semi_ar" else ""
        results[(label, steps)] = (ppl, se, speed)
        print(
            f"| {label} | {steps} | {speed['nfe']:.0f} | {speed['tok_cpu']:.1f} | {speed['tok_wall']:.1f} "
            f"| {ppl:.3f} | {se:.3f} | {unigram_entropy(tokens, model.vocab_size):.3f} |",
            flush=True,
        )
    uncached = {}
    for steps in anc_steps:
        _, speed = timed(model, args.uncached_n, "ancestral", steps, cache=False)
        uncached[steps] = speed
        print(
            f"| ancestral, no cache | {steps} | {speed['nfe']:.0f} | {speed['tok_cpu']:.1f} | "
            f"{speed['tok_wall']:.1f} | (= cached) | | |",
            flush=True,
        )

    fhs_ppl, fhs_se, fhs = results[("first_hitting", length)]
    match = next(
        (
            s
            for s in anc_steps
            if abs(results[("ancestral", s)][0] - fhs_ppl)
            <= 2 * math.hypot(fhs_se, results[("ancestral", s)][1])
        ),
        None,
    )
    print(
        "\n## Target: first-hitting at L steps >= 10x faster than ancestral at equal generative perplexity\n"
    )
    if match is None:
        print(
            f"ancestral never matched first-hitting's gen PPL {fhs_ppl:.3f} up to {anc_steps[-1]} steps"
        )
        return
    anc = results[("ancestral", match)][2]
    for what, speed in (("cached", anc), ("uncached", uncached[match])):
        ratio = fhs["tok_cpu"] / speed["tok_cpu"]
        verdict = "met" if ratio >= 10 else "not met"
        print(
            f"- first_hitting ({length} steps, gen PPL {fhs_ppl:.3f}) vs ancestral {what} ({match} steps, "
            f"gen PPL {results[('ancestral', match)][0]:.3f}): {ratio:.1f}x faster (CPU time): {verdict}"
        )


if __name__ == "__main__":
    main()
