"""Diffusion language models on tiny Shakespeare: held-out bits per character and, for each sampler,
decoder and step count, speed, the samples' own NELBO, generative perplexity under the
autoregressive judge, unigram entropy and the share of real words.

Models: the shipped ``shakespeare`` (masked diffusion, MDLM ELBO, time-agnostic transformer) and
``shakespeare_ar`` (a causal transformer of the same size on the same data: the baseline and the
judge); ``--uniform FOLDER`` adds a uniform-state model (``configs/text_shakespeare_uniform.toml``)
to the held-out and decoder tables. Bits/char: the last 10 % of the text (never trained on) cut
into windows of the context length; a diffusion model's number is its negative ELBO (an upper bound
on -log2 p) averaged over ``--draws`` draws of (t, z_t) per window, the AR model's is exact.

Every row: n samples of the full context length, seed 0, one thread. tokens/s = n * L / CPU seconds
of the sampling call (CPU time, the trustworthy number on a shared machine; wall time beside it),
NFE = network rows evaluated per sample (classifier-free guidance runs two rows per sample and
step), NELBO = bits/char of the samples under the model that drew them (``--draws`` draws; low:
text the model finds likely, too low: degenerate), gen PPL = exp(mean judge NLL per character)
with its standard error from the spread over samples, entropy = unigram entropy of the sampled
characters in bits, words = the share of whitespace-separated words found in the training text.
The held-out row is real text scored the same way.

Sections. samplers: first-hitting, confidence, semi-AR and ancestral (at 64, 256, 1024, ... steps
until its generative perplexity matches first-hitting's at L steps within two standard errors, and
at least to 4096; uncached ancestral gives the same samples, so it is only timed, up to
``--uncached-max`` steps, longer runs being that time per step times their steps). Target:
first-hitting at L steps at least 10x the tokens/s of ancestral where ancestral matches it.
decoders: the dLLM decoders (LLaDA's low-confidence and random remasking on a linear schedule, in
blocks of 32 as LLaDA decodes, Fast-dLLM's threshold parallel decoding alone and in blocks,
ReMDM's cap / rescale / conf / loop) and the uniform model's ancestral sampler. Target:
threshold decoding at >= 3x the tokens/s of first-hitting at equal generative perplexity (within
one standard error). prompted: continuations of ``--prompt`` with classifier-free guidance by the
prompt (weight 1: none).

    .venv/bin/python benchmarks/text.py             # n=64 per row: a few hours of one core
    .venv/bin/python benchmarks/text.py --quick     # n=8, fewer rows and steps: ~15 min
    .venv/bin/python benchmarks/text.py --sections float32   # 20 s: the float32 truncation table
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from difflab.text import load, shakespeare
from difflab.text.categorical import float32_tail_probability
from difflab.text.metrics import bits_per_token, known_words, unigram_entropy
from difflab.text.model import TextModel

SECTIONS = ("float32", "bits", "samplers", "decoders", "prompted")
COLUMNS = (
    "| sampler | steps | NFE/sample | tokens/s (CPU) | tokens/s (wall) | NELBO (bits/char) "
    "| gen PPL | ± se | entropy (bits) | words in train |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


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


class Rows:
    """Runs and prints the rows of one table (:data:`COLUMNS`), keeping each row's numbers."""

    def __init__(self, judge: TextModel, n: int, draws: int, vocabulary: set[str]) -> None:
        self.judge, self.n, self.draws, self.vocabulary = judge, n, draws, vocabulary
        self.results: dict[tuple[str, int], dict] = {}

    def scores(self, model: TextModel, tokens: torch.Tensor) -> dict:
        """NELBO (bits/char) under ``model``, gen PPL ± se, unigram entropy, known-word share."""
        ppl, se = judge_scores(self.judge, tokens)
        texts = [model.tokenizer.decode(row) for row in tokens]
        return {
            "nelbo": bits_per_token(model, tokens, draws=self.draws)[0],
            "ppl": ppl,
            "se": se,
            "entropy": unigram_entropy(tokens, model.vocab_size),
            "words": known_words(texts, self.vocabulary),
        }

    def data(self, model: TextModel, tokens: torch.Tensor) -> dict:
        found = self.scores(model, tokens)
        self.print("held-out text", "", {"nfe": None}, found)
        return found

    def run(self, label: str, model: TextModel, name: str, steps: int, **options) -> dict:
        tokens, speed = timed(model, self.n, name, steps, **options)
        found = {**speed, **self.scores(model, tokens)}
        self.print(label, steps, speed, found)
        self.results[(label, steps)] = found
        return found

    @staticmethod
    def print(label: str, steps: int | str, speed: dict, found: dict) -> None:
        timing = (
            f"{speed['nfe']:.0f} | {speed['tok_cpu']:.1f} | {speed['tok_wall']:.1f}"
            if speed["nfe"] is not None
            else " | | "
        )
        print(
            f"| {label} | {steps} | {timing} | {found['nelbo']:.3f} | {found['ppl']:.3f} | "
            f"{found['se']:.3f} | {found['entropy']:.3f} | {found['words']:.3f} |",
            flush=True,
        )


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
    p.add_argument("--uniform", default=None, help="a uniform-state model folder to compare")
    p.add_argument("--n", type=int, default=64, help="samples per row (64)")
    p.add_argument("--draws", type=int, default=2, help="ELBO draws per held-out window")
    p.add_argument("--windows", type=int, default=0, help="held-out windows (0: all)")
    p.add_argument("--prompt", default="ROMEO:\n", help="the prompted section's prompt")
    p.add_argument(
        "--uncached-max", type=int, default=1024, help="longest uncached ancestral run timed"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="n=8, ancestral only up to 1024 steps, decoders at 64 steps",
    )
    p.add_argument(
        "--sections",
        nargs="+",
        default=list(SECTIONS),
        choices=SECTIONS,
        help="which tables: the float32 Gumbel truncation, held-out bits, samplers, decoders, "
        "prompted",
    )
    args = p.parse_args()
    torch.set_num_threads(1)
    if "float32" in args.sections:
        float32_table()
    if set(args.sections) == {"float32"}:
        return
    model, judge = load(args.model), load(args.judge)
    uniform = load(args.uniform) if args.uniform else None
    length = model.context
    n = 8 if args.quick else args.n

    val, _ = shakespeare("val")
    train, tokenizer = shakespeare("train")
    vocabulary = set(tokenizer.decode(train.tokens).split())
    windows = val.windows(length)
    if args.windows:
        windows = windows[: args.windows]
    if "bits" in args.sections:
        print(
            f"## Held-out bits per character ({len(windows)} windows of {length}, last 10 % of "
            "the text)\n"
        )
        print("| model | parameters | bits/char | ± se |\n|---|---:|---:|---:|")
        kinds = [
            (model, f"masked diffusion, NELBO, {args.draws} draws/window"),
            (judge, "autoregressive, exact"),
        ]
        if uniform is not None:
            kinds.append((uniform, f"uniform-state diffusion, NELBO, {args.draws} draws/window"))
        for m, what in kinds:
            bits, se = bits_per_token(m, windows, draws=args.draws)
            params = sum(q.numel() for q in m.network.parameters())
            print(f"| {m.name} ({what}) | {params:,} | {bits:.4f} | {se:.4f} |", flush=True)

    data = windows[torch.randperm(len(windows), generator=torch.Generator().manual_seed(0))[:n]]
    if "samplers" in args.sections:
        print(f"\n## Samplers ({n} samples of {length} characters, seed 0, one thread)\n")
        print(COLUMNS)
        rows = Rows(judge, n, args.draws, vocabulary)
        rows.data(model, data)
        samplers_table(args, model, rows, length)
    if "decoders" in args.sections:
        print(f"\n## Decoders ({n} samples of {length} characters, seed 0, one thread)\n")
        print(COLUMNS)
        rows = Rows(judge, n, args.draws, vocabulary)
        rows.data(model, data)
        decoders_table(args, model, uniform, rows, length)
    if "prompted" in args.sections:
        print(
            f"\n## Prompted: continuations of {args.prompt!r} with classifier-free guidance "
            f"({n} samples of {length} characters, seed 0)\n"
        )
        print(COLUMNS)
        rows = Rows(judge, n, args.draws, vocabulary)
        steps = 64 if args.quick else length
        for weight in (1.0, 1.5, 2.0, 3.0):
            rows.run(
                f"first_hitting, guidance {weight:g}",
                model,
                "first_hitting",
                steps,
                prompt=args.prompt,
                guidance=weight,
            )


def decoders_table(
    args: argparse.Namespace, model: TextModel, uniform: TextModel | None, rows: Rows, length: int
) -> None:
    """The dLLM decoders and first-hitting at the same step count, then the threshold target
    against first-hitting at L steps (the exact sampler)."""
    steps = 64 if args.quick else length
    llada = {"schedule": "linear"}
    settings = [("first_hitting", "first_hitting", s, {}) for s in sorted({steps, length})]
    settings += [
        ("confidence (low_confidence, linear)", "confidence", steps, llada),
        ("confidence (random, linear)", "confidence", steps, {**llada, "remasking": "random"}),
        (
            "semi_ar (block 32, confidence low_confidence, linear: LLaDA)",
            "semi_ar",
            steps,
            {**llada, "block": 32, "inner": "confidence"},
        ),
    ]
    settings += [
        (f"threshold {tau:g}", "threshold", length, {"threshold": tau})
        for tau in ((0.9, 0.5) if args.quick else (0.99, 0.9, 0.7, 0.5))
    ]
    settings.append(
        (
            "semi_ar (block 32, threshold 0.9: Fast-dLLM)",
            "semi_ar",
            length,
            {"block": 32, "inner": "threshold", "threshold": 0.9},
        )
    )
    settings += [
        (f"remdm ({rule})", "remdm", steps, {"remasking": rule})
        for rule in ("cap", "rescale", "conf", "loop")
    ]
    if args.quick:
        settings = [s for s in settings if not s[0].startswith(("remdm (rescale", "remdm (conf"))]
    for label, name, s, options in settings:
        rows.run(label, model, name, s, **options)
    if uniform is not None:
        for s in (steps, 4 * steps):
            rows.run(
                f"uniform ({uniform.name}): uniform_ancestral", uniform, "uniform_ancestral", s
            )

    base = rows.results[("first_hitting", length)]
    print(
        f"\nThreshold decoding against first-hitting at {length} steps (gen PPL {base['ppl']:.3f} ± "
        f"{base['se']:.3f}, {base['tok_cpu']:.1f} tokens/s CPU); target: >= 3x the tokens/s at "
        "equal generative perplexity (within one standard error)"
    )
    for (label, _), found in rows.results.items():
        if "threshold" not in label:
            continue
        speedup = found["tok_cpu"] / base["tok_cpu"]
        equal = abs(found["ppl"] - base["ppl"]) <= math.hypot(found["se"], base["se"])
        met = "met" if speedup >= 3 and equal else "not met"
        print(
            f"- {label}: {speedup:.1f}x the tokens/s, NFE {found['nfe']:.0f}, gen PPL "
            f"{found['ppl']:.3f} ± {found['se']:.3f} ({'equal' if equal else 'not equal'}): {met}"
        )


def samplers_table(args: argparse.Namespace, model: TextModel, rows: Rows, length: int) -> None:
    """First-hitting, confidence and semi-AR at 64 and L steps, then ancestral until it matches
    first-hitting's generative perplexity, cached and uncached."""
    settings = [(name, s, {}) for name in ("first_hitting", "confidence") for s in (64, length)]
    settings += [("semi_ar", s, {"block": 32}) for s in (64, length)]
    results = rows.results
    n = rows.n

    def row(label: str, name: str, steps: int, **options) -> tuple[float, float, dict]:
        found = rows.run(label, model, name, steps, **options)
        return found["ppl"], found["se"], found

    for name, steps, options in settings:
        label = name + (f" (block {options['block']}, first_hitting)" if name == "semi_ar" else "")
        row(label, name, steps, **options)
    fhs = results[("first_hitting", length)]
    fhs_ppl, fhs_se = fhs["ppl"], fhs["se"]

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
            f"{speed['nfe']:.0f} | {speed['tok_cpu']:.1f} | {speed['tok_wall']:.1f} | | | | | |",
            flush=True,
        )

    print(f"\n## First-hitting ({length} steps) against ancestral: speed-up in tokens/s (CPU)\n")
    print(f"| ancestral steps | gen PPL (first-hitting: {fhs_ppl:.3f}) | cached | uncached |")
    print("|---:|---:|---:|---:|")
    for steps in ancestral:
        found = results[("ancestral", steps)]
        ppl, se, speed = found["ppl"], found["se"], found
        cached = fhs["tok_cpu"] / speed["tok_cpu"]
        slow = f"{fhs['tok_cpu'] / uncached[steps]['tok_cpu']:.1f}x"
        print(f"| {steps} | {ppl:.3f} ± {se:.3f} | {cached:.1f}x | {slow} |")
    print(
        "\nTarget (first-hitting at L steps >= 10x faster than ancestral at equal generative "
        "perplexity): "
        + (
            f"ancestral first matches within two standard errors at {match} steps, where "
            f"first-hitting is {fhs['tok_cpu'] / results[('ancestral', match)]['tok_cpu']:.1f}x "
            "(cached) and "
            + f"{fhs['tok_cpu'] / uncached[match]['tok_cpu']:.1f}x (uncached) faster"
            if match is not None
            else f"ancestral did not match first-hitting's generative perplexity up to {top} steps"
        )
    )


if __name__ == "__main__":
    main()
