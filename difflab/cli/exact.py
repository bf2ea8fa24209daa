"""The exact 2-D (and 64-D) Gaussian mixtures the command line samples and optimizes grids for:
their samples are judged against the true density (DESIGN.md, "Truth comes from exact models")."""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path
from typing import Any

from difflab.cli.common import CliError, check_output, lookup, user_errors

__all__ = ["EXACT_MODELS", "EXACT_SIGMA_RANGE", "exact_model", "grid_function", "sample_exact"]

EXACT_MODELS = ("ring2d", "random2d", "stiff64")
EXACT_SIGMA_RANGE = (0.002, 80.0)  # the EDM range, which covers these mixtures' scales
DEFAULTS = {"sampler": "dpmpp_2m", "schedule": "karras", "steps": 10, "n": 2000}


def exact_model(name: str) -> Any:
    """The exact mixture called ``name`` (one of :data:`EXACT_MODELS`)."""
    from difflab.testing import random_mixture, ring2d, stiff

    factories = {
        "ring2d": ring2d,
        "random2d": lambda: random_mixture(2, 6, seed=3, scale=1.5),
        "stiff64": stiff,
    }
    if name not in factories:
        raise CliError(f"unknown model {name!r}; available: {', '.join(EXACT_MODELS)}")
    return factories[name]()


def grid_function(name: str) -> tuple[Any, int | None]:
    """(grid(steps, sigma_min, sigma_max, ...), its fixed step count or None): a grid by name, or the
    grid saved in a JSON file by `difflab schedule optimize`."""
    from difflab import schedules

    if not name.endswith(".json"):
        return lookup(schedules.get, name), None
    try:
        saved = schedules.OptimizedGrid.from_json(Path(name).read_text())
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CliError(f"cannot read the grid {name}: {e}") from None
    return (lambda steps, *_, **__: saved.sigmas), len(saved.sigmas) - 1


def sample_exact(args: argparse.Namespace) -> None:
    """`difflab sample` on an exact mixture: a density-and-samples PNG, or the raw samples."""
    import numpy as np
    import torch

    from difflab import sampling
    from difflab.core.counting import CountingDenoiser
    from difflab.utils.files import atomic_write_bytes
    from difflab.utils.images import save_png

    for option, value in (
        ("--labels", args.labels),
        ("--guidance", args.guidance),
        ("--guidance-interval", args.guidance_interval),
        ("--guidance-rescale", args.guidance_rescale),
    ):
        if value is not None:
            raise CliError(f"{option} needs a class-conditional saved model; {args.model} is not")
    opts = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in DEFAULTS.items()}
    model = exact_model(args.model)
    sampler = lookup(sampling.get, opts["sampler"])
    grid_fn, grid_steps = grid_function(opts["schedule"])
    steps = opts["steps"] if args.steps is not None or grid_steps is None else grid_steps
    out = check_output(args.out, (".png", ".npz"))
    if out.suffix.lower() == ".png" and model.dim != 2:
        raise CliError(f"a PNG needs a 2-D model; {args.model} is {model.dim}-D (use --out x.npz)")
    with user_errors():
        sigmas = grid_fn(steps, *EXACT_SIGMA_RANGE)
    if len(sigmas) != steps + 1:
        raise CliError(
            f"the grid {opts['schedule']} has {len(sigmas) - 1} steps, not --steps {steps}"
        )

    n = opts["n"]
    gens = sampling.generators(args.seed, n)
    x = sampling.randn((n, model.dim), gens, torch.float64) * sigmas[0]
    counter = CountingDenoiser(model)  # the NFE as spent, adaptive samplers included
    start = time.perf_counter()
    samples = sampler(counter, x, sigmas, generator=gens)
    seconds = time.perf_counter() - start

    exact = model.sample(n, generator=torch.Generator().manual_seed(args.seed))
    ll, ll_exact = float(model.log_prob(samples).mean()), float(model.log_prob(exact).mean())
    summary = (
        f"{opts['sampler']} on {opts['schedule']} grid: {steps} steps = {counter.calls} NFE, "
        f"{n} samples in {seconds:.2f} s; mean log-likelihood {ll:.3f} vs exact samples "
        f"{ll_exact:.3f} (gap {ll_exact - ll:+.3f} nats)"
    )
    if out.suffix.lower() == ".npz":
        buf = io.BytesIO()
        np.savez(buf, samples=samples.numpy(), sigmas=sigmas.numpy())
        atomic_write_bytes(out, buf.getvalue())
    else:
        title = f"{n} samples: {opts['sampler']}, {steps} steps"
        save_png(_density_figure(model, samples.numpy(), exact.numpy(), summary, title), out)
    print(summary)
    print(f"wrote {out}")


def _density_figure(model: Any, samples: Any, exact: Any, summary: str, title: str) -> Any:
    import numpy as np
    import torch

    from difflab.utils.images import colormap, panels, scatter

    lo, hi = np.percentile(exact, [0.5, 99.5], axis=0)
    pad = 0.15 * (hi - lo).max()
    extent = (lo[0] - pad, hi[0] + pad, lo[1] - pad, hi[1] + pad)
    size = 320
    xs = np.linspace(extent[0], extent[1], size)
    ys = np.linspace(extent[3], extent[2], size)
    grid = torch.tensor(np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2))
    density = model.log_prob(grid).exp().reshape(size, size).numpy()
    return panels(
        [
            ("true density p(x)", colormap(np.sqrt(density / density.max()))),
            (title, scatter(samples, extent, size)),
        ],
        caption=summary.split(";")[1].strip(),
    )
