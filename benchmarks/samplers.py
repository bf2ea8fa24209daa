"""Every difflab sampler against diffusers and k-diffusion on exact Gaussian mixtures.

For each exact mixture (ring2d: 8 sharp modes in 2-D; stiff64: 64-D, per-axis std 0.03 .. 1) under
each DDPM beta table (linear; scaled_linear 0.00085 .. 0.012), the same start x = x0 + sigma_max eps
(sigma_max the table's last level) goes to every method: each difflab sampler in the live registry
(difflab.sampling.available(), with the option variants in VARIANTS) on each step grid in GRIDS, and
the anchors (benchmarks/anchors.py): diffusers' DDIM, DDPM, DPMSolverMultistep, DPMSolverSinglestep,
UniPC, DEIS, Euler, EulerAncestral, Heun, LMS and k-diffusion's euler, heun, dpm_2, lms, dpmpp_2m,
dpmpp_2m_sde, dpmpp_3m_sde, dpmpp_sde, dpm_adaptive, each at the settings listed there. At every NFE budget a
method runs with the most steps that fit; NFE is the number of model calls, counted.

Metrics against the exact probability-flow ODE solution from the same start, mixture.ode(x,
sigma_max, 0), whose endpoints are exact samples of p_0:
  RMSE      mean over samples of the root-mean-square over coordinates of (x_method - x_exact)
  dLL       mean log p_0(exact endpoints) - mean log p_0(method endpoints), nats; the noise floor is
            2 bootstrap standard deviations of the mean log p_0 of the exact endpoints
  SW2       sliced 2-Wasserstein distance to the exact endpoints (fixed random projections); its
            floor is SW2 between the exact endpoints and an independent exact sample of the same size
Fitted grids (grid "fitted:<sampler>", --fit): difflab.schedules.optimize(method="direct") fits one
grid per case, sampler and budget to calibration starts of their own (seed FIT_SEED, never the
evaluation start) against their exact flow, minimizing this benchmark's RMSE (metric "mean_rms");
step-grid optimization is part of difflab, so these rows count as difflab's. k-diffusion's euler,
lms and dpmpp_2m also run on those grids, shown in their own column and never counted as the
anchors' settings.
The summary per case: at each budget the difflab method with the smallest RMSE against the anchor
with the smallest RMSE (ratio = difflab / anchor; target <= 0.5), and their dLL against the floor
(target |dLL| <= floor from 10 NFE up). Last, the loop overhead per NFE of every sampler with a
zero-cost model (D(x) = x) at batch 1, dim 2, about 50 NFE: median of repeated runs (target: difflab
no slower per NFE than k-diffusion's fastest sampler).

Tables go to stdout (markdown), progress to stderr. --out writes the tables to a markdown file and
every row to a CSV next to it.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))

from anchors import (
    ADAPTIVE,
    GRIDS,
    Method,
    Problem,
    Unsupported,
    difflab_methods,
    diffusers_methods,
    exact_problem,
    k_diffusion_methods,
    setting_label,
    sliced_w2,
    within,
    zero_cost_problem,
)

from difflab import sampling
from difflab.core.processes import VPDiscrete
from difflab.schedules import optimize
from difflab.testing import GaussianMixture, ring2d, stiff

BUDGETS = (4, 5, 6, 8, 10, 12, 15, 20, 25, 50)
MIXTURES = {"ring2d": ring2d, "stiff64": stiff}
BETAS = {
    "linear": {"schedule": "linear"},
    "scaled_linear": {"schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
}
# option variants per difflab sampler (the defaults are always run); variants a sampler does not
# accept are reported and skipped, so this may name options that are still being written
VARIANTS: dict[str, list[dict[str, Any]]] = {
    "euler": [{"final": "denoised"}],
    "dpmpp_2m": [{"final": "denoised"}],
    "dpmpp_3m": [{"final": "denoised"}, {"variant": "reference"}],
    "unipc": [{"order": 2}, {"variant": "bh1"}, {"corrector": False}, {"final": "denoised"}],
    "deis": [{"order": 2}],
    "adaptive": [{"rtol": r, "atol": r} for r in (1e-1, 3e-2, 1e-2, 3e-3, 3e-4, 1e-4)],
}


@dataclass(frozen=True)
class Preset:
    samples: dict[str, int]  # per mixture
    grids: list[str]
    fit: list[str]  # difflab samplers that also run on grids fitted to each case


PRESETS = {
    "quick": Preset({"ring2d": 256, "stiff64": 128}, ["karras", "exponential", "trailing"], []),
    "full": Preset(
        {"ring2d": 2000, "stiff64": 500},
        ["karras", "exponential", "trailing", "kl_optimal", "beta", "ays"],
        ["unipc", "ipndm", "deis"],
    ),
}
SEED, METHOD_SEED, FIT_SEED, PROJECTIONS = 0, 1, 2, 128
FIT_SAMPLES = {"ring2d": 256, "stiff64": 128}  # calibration starts per fitted grid
# k-diffusion samplers (one model call per step) also run on difflab's fitted grids, for reference
K_ON_FITTED = ("euler", "lms", "dpmpp_2m")
LL_FLOOR_SIGMAS, BOOTSTRAP = 2, 500
LL_TARGET_FROM, RATIO_TARGET = 10, 0.5


# ------------------------------------------------------------------------------------------------
# cases: a problem and its exact reference


@dataclass
class Case:
    mixture_name: str
    betas: str
    mixture: GaussianMixture
    problem: Problem
    exact: Tensor  # exact flow endpoints from the start
    log_p: float  # their mean log p_0
    ll_floor: float
    sw2_floor: float

    @property
    def name(self) -> str:
        return f"{self.mixture_name} / {self.betas}"


def make_case(mixture_name: str, betas: str, n: int) -> Case:
    mixture = MIXTURES[mixture_name]()
    process = VPDiscrete(**BETAS[betas])
    g = torch.Generator().manual_seed(SEED)
    x0 = mixture.sample(n, generator=g)
    x = x0 + process.sigma_max * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    exact = mixture.ode(x, process.sigma_max, 0.0).x
    log_p = mixture.log_prob(exact, 0.0)
    boot = torch.randint(0, n, (BOOTSTRAP, n), generator=g)
    ll_floor = LL_FLOOR_SIGMAS * float(log_p[boot].mean(1).std())
    sw2_floor = sw2(mixture.sample(n, generator=g), exact)
    problem = exact_problem(mixture, process, x)
    return Case(
        mixture_name, betas, mixture, problem, exact, float(log_p.mean()), ll_floor, sw2_floor
    )


def sw2(y: Tensor, reference: Tensor) -> float:
    """Sliced W2 on the same fixed projections for every method."""
    return float(sliced_w2(y, reference, PROJECTIONS, torch.Generator().manual_seed(SEED)))


# ------------------------------------------------------------------------------------------------
# methods


@cache
def difflab_variants() -> list[tuple[str, dict[str, Any]]]:
    """(sampler, options) for every registered sampler (aliases once) and its VARIANTS."""
    names = sorted({sampling.info(n).name for n in sampling.available()})
    out = []
    for name in names:
        for options in [{}, *VARIANTS.get(name, [])]:
            try:  # a tiny trial run rejects options the sampler does not take
                sampling.get(name)(
                    lambda x, s: x, torch.zeros(1, 1, dtype=torch.float64), [2.0, 1.0, 0.5, 0.0],
                    generator=torch.Generator(), **options,
                )  # fmt: skip
            except (ValueError, TypeError) as e:
                warn(f"difflab {name} {options}: skipped ({e})")
                continue
            out.append((name, options))
    return out


def all_methods(grids: list[str]) -> list[Method]:
    methods = [m for name, opt in difflab_variants() for m in difflab_methods(name, opt, grids)]
    return methods + diffusers_methods() + k_diffusion_methods(grids)


FITTED = "fitted:"


def fit_grids(case: Case, samplers: list[str], budgets: list[int]) -> list[Method]:
    """Fit a grid per sampler and budget to this case (into ``case.problem.grids``); the methods that
    run on them: each difflab sampler on its own grids and K_ON_FITTED on every fitted grid."""
    process, mixture = case.problem.process, case.mixture
    g = torch.Generator().manual_seed(FIT_SEED)
    n = FIT_SAMPLES[case.mixture_name]
    cal = process.sigma_max * torch.randn(n, mixture.dim, generator=g, dtype=torch.float64)
    exact_cal = mixture.ode(cal, process.sigma_max, 0.0).x
    labels = [FITTED + name for name in samplers]
    for name, label in zip(samplers, labels):
        grids = case.problem.grids.setdefault(label, {})
        steps_for = within(sampling.info(name).nfe)
        for budget in tqdm(budgets, desc=f"fit {name}", file=sys.stderr, leave=False):
            if steps_for(budget) in grids:  # a budget with the same steps as one already fitted
                continue
            fit = optimize(
                mixture, name, budget, cal, sigma_min=process.sigma_min,
                sigma_max=process.sigma_max, reference=(exact_cal, case.exact),
                held_out=case.problem.x, progress=False, metric="mean_rms",
            )  # fmt: skip
            grids[len(fit.sigmas) - 1] = fit.sigmas
    ks = [m for m in k_diffusion_methods(labels) if m.sampler in K_ON_FITTED and not m.setting]
    return [
        m for name, label in zip(samplers, labels) for m in difflab_methods(name, {}, [label])
    ] + ks


# ------------------------------------------------------------------------------------------------
# runs


@dataclass
class Row:
    case: str
    budget: int
    library: str
    sampler: str
    setting: str
    grid: str
    stochastic: bool
    steps: int
    nfe: int
    rmse: float
    ll_gap: float
    sw2: float
    seconds: float


@dataclass
class Log:
    """What did not run (once per method), and which targets were missed."""

    notes: dict[str, str] = field(default_factory=dict)
    missed: list[str] = field(default_factory=list)  # targets missed

    def add(self, method: Method, reason: str) -> None:
        key = f"{method.library} {method.label} on {method.grid}"
        if key not in self.notes:
            self.notes[key] = reason
            warn(f"{key}: {reason}")


def evaluate(method: Method, case: Case, budgets: Iterable[int], log: Log) -> list[Row]:
    """Rows of one method on one case at each budget (a run shared by budgets with equal steps)."""
    rows, runs = [], {}
    for budget in budgets:
        steps = method.steps_for(budget)
        if steps is None:
            continue
        if steps not in runs:
            runs[steps] = run(method, case, steps, log)
        result = runs[steps]
        if result is None:
            continue
        if result.nfe > budget:
            log.add(method, f"counted {result.nfe} NFE: over every budget below that")
            continue
        rows.append(
            Row(
                case.name, budget, method.library, method.sampler, method.setting, method.grid,
                method.stochastic, steps, result.nfe, result.rmse, result.ll_gap, result.sw2,
                result.seconds,
            )
        )  # fmt: skip
    return rows


@dataclass
class Result:
    nfe: int
    rmse: float
    ll_gap: float
    sw2: float
    seconds: float


def run(method: Method, case: Case, steps: int, log: Log) -> Result | None:
    try:
        job = method.prepare(case.problem, steps, METHOD_SEED)
        start = time.perf_counter()
        y = job().double()
        seconds = time.perf_counter() - start
    except Unsupported as e:
        log.add(method, f"unsupported: {e}")
        return None
    except Exception as e:  # a sampler under development may fail: report it, keep going
        log.add(method, f"failed at {steps} steps: {type(e).__name__}: {e}")
        return None
    if not bool(torch.isfinite(y).all()):
        log.add(method, f"non-finite output at {steps} steps")
        return None
    rmse = float((y - case.exact).square().mean(1).sqrt().mean())
    ll_gap = case.log_p - float(case.mixture.log_prob(y, 0.0).mean())
    return Result(job.counter.calls, rmse, ll_gap, sw2(y, case.exact), seconds)


# ------------------------------------------------------------------------------------------------
# tables


def best(
    rows: list[Row], libraries: set[str], budget: int, key: str = "rmse", fitted: bool | None = None
) -> Row | None:
    """The row of least ``key``; ``fitted``: only rows on fitted grids (True) or none of them."""
    pool = [
        r for r in rows
        if r.library in libraries and r.budget == budget
        and (fitted is None or r.grid.startswith(FITTED) == fitted)
    ]  # fmt: skip
    return min(pool, key=lambda r: getattr(r, key), default=None)


def method_name(r: Row) -> str:
    setting = f"({r.setting})" if r.setting else ""
    grid = f" · {r.grid}" if r.grid != "-" else ""
    prefix = "" if r.library == "difflab" else f"{r.library}: "
    return f"{prefix}{r.sampler}{setting}{grid}"


def markdown(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])


ANCHORS = {"diffusers", "k-diffusion"}


def sampler_list() -> str:
    """Every registered difflab sampler (the registry's own record): NFE for n intervals ending in
    0, order (of the noise-free limit for stochastic ones), noise sources, first docstring line."""
    body = []
    for name in sorted({sampling.info(n).name for n in sampling.available()}):
        info = sampling.info(name)
        aliases = [a for a in sampling.available() if a != name and sampling.info(a) is info]
        label = f"{name} ({', '.join(aliases)})" if aliases else name
        if info.adaptive:
            nfe = "adaptive"
        else:  # a n + b, read off two step counts (every rule here is affine from n = 2)
            a = info.nfe(11) - info.nfe(10)
            b = info.nfe(10) - 10 * a
            nfe = ("n" if a == 1 else f"{a}n") + (f" {'+' if b > 0 else '-'} {abs(b)}" if b else "")
        noise = ", ".join(info.noises) if info.stochastic else "-"
        first = " ".join(info.fn.__doc__.strip().split("\n\n")[0].split())  # first paragraph
        body.append([label, nfe, str(info.order), noise, first.replace("|", "\\|")])
    note = (
        "NFE for n intervals ending at 0 (a grid from sigma = inf: 1 + NFE(n - 1)); order: against "
        "the exact flow, of the noise-free limit for stochastic samplers; noise: the sources its "
        '`noise=` option takes, the default first ("brownian": one Brownian path per sample).'
    )
    table = markdown(["sampler", "NFE", "order", "noise", "update"], body)
    return f"### Samplers\n\n{note}\n\n{table}"


def summary_table(case: Case, rows: list[Row], budgets: list[int]) -> tuple[str, list[str]]:
    """The per-budget comparison and the list of missed targets."""
    body, missed = [], []
    for b in budgets:
        d, a = best(rows, {"difflab"}, b), best(rows, ANCHORS, b, fitted=False)
        k = best(rows, ANCHORS, b, fitted=True)
        if d is None or a is None:
            continue
        ratio = d.rmse / a.rmse
        ll_ok = abs(d.ll_gap) <= case.ll_floor
        if ratio > RATIO_TARGET:
            missed.append(f"RMSE ratio {ratio:.2f} > {RATIO_TARGET} at {b} NFE")
        if b >= LL_TARGET_FROM and not ll_ok:
            missed.append(f"|dLL| {abs(d.ll_gap):.3g} > floor {case.ll_floor:.3g} at {b} NFE")
        body.append(
            [
                str(b), f"{method_name(d)} [{d.nfe}]", f"{d.rmse:.2e}", f"{d.ll_gap:+.4f}",
                f"{d.sw2:.2e}", f"{method_name(a)} [{a.nfe}]", f"{a.rmse:.2e}", f"{a.ll_gap:+.4f}",
                f"{a.sw2:.2e}", f"{ratio:.3f}" + ("" if ratio <= RATIO_TARGET else " ✗"),
                f"{method_name(k)}: {k.rmse:.2e}" if k else "—",
            ]
        )  # fmt: skip
    header = [
        "NFE", "difflab best [NFE]", "RMSE", "dLL", "SW2", "anchor best [NFE]", "RMSE", "dLL",
        "SW2", "ratio", "k-diffusion on difflab's fitted grids (RMSE)",
    ]  # fmt: skip
    return markdown(header, body), missed


def matrix_table(rows: list[Row], budgets: list[int], key: str, stochastic: bool) -> str:
    """Per sampler (best setting and grid), ``key`` at each budget."""
    names = sorted(
        {(r.library, r.sampler) for r in rows if r.stochastic == stochastic},
        key=lambda k: (k[0] != "difflab", k),
    )
    body = []
    for library, sampler in names:
        mine = [r for r in rows if (r.library, r.sampler) == (library, sampler)]
        mine = [r for r in mine if r.stochastic == stochastic]
        cells = [best(mine, {library}, b, key) for b in budgets]
        body.append(
            [f"{library}: {sampler}"] + [f"{getattr(c, key):.2e}" if c else "—" for c in cells]
        )
    return markdown(["sampler", *map(str, budgets)], body)


def case_report(case: Case, rows: list[Row], budgets: list[int]) -> tuple[str, list[str]]:
    summary, missed = summary_table(case, rows, budgets)
    parts = [
        f"### {case.name} (sigma_max = {case.problem.sigma_max:.4g}, {len(case.exact)} samples)",
        f"dLL noise floor (2 bootstrap std) = {case.ll_floor:.4f} nats; "
        f"SW2 between two exact samples = {case.sw2_floor:.2e}.",
        summary,
        "Targets missed: " + ("; ".join(missed) if missed else "none") + ".",
        "Best RMSE per deterministic sampler (over its settings and grids):",
        matrix_table(rows, budgets, "rmse", stochastic=False),
        "Best SW2 per stochastic sampler (over its settings and grids):",
        matrix_table(rows, budgets, "sw2", stochastic=True),
    ]
    return "\n\n".join(parts), missed


# ------------------------------------------------------------------------------------------------
# loop overhead


def overhead_methods(methods: list[Method]) -> list[Method]:
    """One method per sampler: its defaults (first setting) on the karras grid (diffusers: its first
    setting; k-diffusion dpm_adaptive: rtol = 0.05)."""
    chosen: dict[tuple[str, str], Method] = {}
    for m in methods:
        if m.grid not in ("karras", "-", ADAPTIVE) or (m.library == "difflab" and m.setting):
            continue
        if m.sampler == "dpm_adaptive" and m.setting != "rtol=0.05":
            continue
        chosen.setdefault((m.library, m.sampler), m)
    return list(chosen.values())


def time_per_nfe(
    methods: list[Method], problem: Problem, budget: int, repeats: int, log: Log
) -> list[tuple[Method, float, int]]:
    """(method, median seconds per model call of a run, NFE of a run), the runs of all methods
    interleaved round-robin so that the machine's load changes hit all of them alike."""
    jobs = []
    for m in methods:
        try:
            job = m.prepare(problem, m.steps_for(budget), METHOD_SEED)
            job()  # warm-up; counts the NFE of a run
            jobs.append((m, job, job.counter.calls, []))
        except Exception as e:
            log.add(m, f"overhead run failed: {type(e).__name__}: {e}")
    for _ in tqdm(range(repeats), desc="overhead", file=sys.stderr, leave=False):
        for _, job, _, times in jobs:
            job.reset()
            start = time.perf_counter()
            job()
            times.append(time.perf_counter() - start)
    return [(m, statistics.median(times) / nfe, nfe) for m, _, nfe, times in jobs]


def overhead_report(methods: list[Method], repeats: int, log: Log) -> str:
    process = VPDiscrete()
    x = torch.randn(1, 2, generator=torch.Generator().manual_seed(SEED)) * process.sigma_max
    timed = time_per_nfe(methods, zero_cost_problem(process, x), 50, repeats, log)
    timed.sort(key=lambda t: (t[0].library != "difflab", t[1]))
    body = [[m.library, m.label, m.grid, str(nfe), f"{sec * 1e6:.0f}"] for m, sec, nfe in timed]
    table = markdown(["library", "sampler", "grid", "NFE", "µs / NFE"], body)
    k_best = min((sec for m, sec, _ in timed if m.library == "k-diffusion"), default=math.inf)
    slow = [
        f"{m.label} ({sec * 1e6:.0f} µs)"
        for m, sec, _ in timed
        if m.library == "difflab" and sec > k_best
    ]
    note = (
        f"k-diffusion's fastest: {k_best * 1e6:.0f} µs / NFE. difflab samplers slower per NFE: "
        + (", ".join(slow) if slow else "none")
        + "."
    )
    log.missed += [f"loop overhead of {s} > k-diffusion's fastest" for s in slow]
    title = (
        f"### Loop overhead (zero-cost model, batch 1, dim 2, ~50 NFE, CPU, median of {repeats})"
    )
    return f"{title}\n\n{table}\n\n{note}"


# ------------------------------------------------------------------------------------------------
# main


def warn(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    size = p.add_mutually_exclusive_group()
    for name, preset in PRESETS.items():
        samples = ", ".join(f"{k} {v}" for k, v in preset.samples.items())
        size.add_argument(
            f"--{name}",
            action="store_const",
            const=name,
            dest="preset",
            help=f"samples per case: {samples}; grids: {' '.join(preset.grids)}"
            + (" (the default)" if name == "full" else ""),
        )
    p.add_argument("--samples", type=int, help="samples per case (overrides the preset's)")
    p.add_argument("--grids", nargs="+", choices=list(GRIDS), help="grids (overrides the preset's)")
    p.add_argument(
        "--fit", nargs="*", help="difflab samplers to run on fitted grids (overrides the preset's)"
    )
    p.add_argument("--out", type=Path, help="write the markdown here and the CSV beside it")
    p.add_argument("--csv", type=Path, help="write every row here (default: --out with .csv)")
    p.add_argument("--mixtures", nargs="+", choices=list(MIXTURES), default=list(MIXTURES))
    p.add_argument("--betas", nargs="+", choices=list(BETAS), default=list(BETAS))
    p.add_argument("--budgets", nargs="+", type=int, default=list(BUDGETS))
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--repeats", type=int, default=30, help="loop-overhead repeats (median)")
    p.add_argument("--no-overhead", action="store_true", help="skip the loop-overhead timing")
    p.add_argument(
        "--write-auto",
        type=Path,
        help="write the per-budget choice of difflab.sampling.auto (JSON; the package's copy is "
        "difflab/sampling/auto.json)",
    )
    return p.parse_args(argv)


def write_csv(path: Path, rows: list[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(Row.__dataclass_fields__)
        writer.writerows([list(vars(r).values()) for r in rows])


def run_cases(args: argparse.Namespace, preset: Preset, log: Log) -> tuple[list[str], list[Row]]:
    """Every method on every case: the report sections (printed as they finish) and all rows."""
    methods = all_methods(args.grids or preset.grids)
    sections, rows = [], []
    cases = [(m, b) for m in args.mixtures for b in args.betas]
    with tqdm(total=len(cases) * len(methods), file=sys.stderr, desc="runs") as bar:
        for mixture_name, betas in cases:
            bar.set_postfix_str(f"{mixture_name}/{betas}: exact flow")
            case = make_case(mixture_name, betas, args.samples or preset.samples[mixture_name])
            bar.set_postfix_str(f"{mixture_name}/{betas}: fitting grids")
            fitted = fit_grids(case, preset.fit if args.fit is None else args.fit, args.budgets)
            bar.total += len(fitted)
            bar.set_postfix_str(f"{mixture_name}/{betas}")
            case_rows = []
            for method in methods + fitted:
                case_rows += evaluate(method, case, args.budgets, log)
                bar.update()
            text, missed = case_report(case, case_rows, args.budgets)
            log.missed += [f"{case.name}: {m}" for m in missed]
            print(text + "\n", flush=True)
            sections.append(text)
            rows += case_rows
    return sections, rows


AUTO_GRIDS = {"karras", "exponential", "kl_optimal", "beta"}  # grids that need only the endpoints


def write_auto(path: Path, rows: list[Row], budgets: list[int], preset: str) -> None:
    """For each budget, the deterministic difflab (sampler, options, grid) whose RMSE, relative to the
    best difflab RMSE of each case at that budget, has the smallest geometric mean over the cases."""
    options = {(name, setting_label(opt)): opt for name, opt in difflab_variants()}
    entries = []
    for b in budgets:
        pool = [
            r for r in rows
            if r.library == "difflab" and r.budget == b and not r.stochastic and r.grid in AUTO_GRIDS
        ]  # fmt: skip
        best_of_case = {c: min(r.rmse for r in pool if r.case == c) for c in {r.case for r in pool}}
        scores: dict[tuple[str, str, str], list[float]] = {}
        for r in pool:
            scores.setdefault((r.sampler, r.setting, r.grid), []).append(
                math.log(r.rmse / best_of_case[r.case])
            )
        full = {k: v for k, v in scores.items() if len(v) == len(best_of_case)}
        if not full:
            continue
        (sampler, setting, grid), logs = min(full.items(), key=lambda kv: sum(kv[1]))
        name, grid_options, _ = GRIDS[grid]
        entries.append(
            {
                "nfe": b, "sampler": sampler, "options": options[(sampler, setting)],
                "grid": name, "grid_options": grid_options,
                "relative_rmse": round(math.exp(sum(logs) / len(logs)), 4),
            }
        )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "generated_by": f"python benchmarks/samplers.py --{preset} --write-auto {path}",
                "cases": sorted({r.case for r in rows}),
                "entries": entries,
            },
            indent=1,
        )
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    name = args.preset or "full"
    preset = PRESETS[name]
    torch.set_num_threads(args.threads)
    log = Log()
    sections, rows = run_cases(args, preset, log)
    sections.insert(0, sampler_list())
    if not args.no_overhead:
        text = overhead_report(overhead_methods(all_methods(["karras"])), args.repeats, log)
        print(text + "\n")
        sections.append(text)
    if log.notes:
        sections.append(
            "### Not run\n\n" + "\n".join(f"- {k}: {v}" for k, v in sorted(log.notes.items()))
        )
    missed = "\n".join(f"- {m}" for m in log.missed) if log.missed else "none"
    print(f"### Targets missed\n\n{missed}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fit = " ".join(preset.fit if args.fit is None else args.fit) or "none"
        grids = " ".join(args.grids or preset.grids) + f"; fitted grids for: {fit}"
        header = (
            f"# Samplers on exact mixtures\n\nGenerated by `python benchmarks/samplers.py --{name}` "
            f"(grids: {grids}; torch {torch.__version__}, {args.threads} thread(s)). "
            "Definitions: see `python benchmarks/samplers.py --help`.\n\n"
            f"### Targets missed\n\n{missed}"
        )
        args.out.write_text("\n\n".join([header, *sections]) + "\n")
    if args.write_auto:
        write_auto(args.write_auto, rows, args.budgets, name)
    csv_path = args.csv or (args.out.with_suffix(".csv") if args.out else None)
    if csv_path:
        write_csv(csv_path, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
