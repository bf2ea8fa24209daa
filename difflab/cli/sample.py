"""`difflab sample`: sample a saved model (a labelled image grid, a scatter plot, or raw samples) or
an exact mixture (samples next to the true density)."""

from __future__ import annotations

import argparse
import io
import re
import time
from typing import Any

from difflab.cli.common import CliError, check_output, lookup, positive, user_errors
from difflab.cli.exact import EXACT_MODELS, grid_function, sample_exact

__all__ = ["add", "load_model", "parse_labels"]

LABEL_FORMS = "e.g. 0-9, 3, 1,4,7, all, or none (the null class)"


def add(commands: Any) -> None:
    s = commands.add_parser(
        "sample",
        help="sample a model and write a PNG (or the raw samples as .npz)",
        description="Sample a saved model (a shipped name, see `difflab models`, or a model folder) "
        "or an exact 2-D mixture with any registered sampler and step grid. Images give a grid with "
        "one row per class label, 2-D vectors a scatter plot; .npz holds the raw samples (images "
        "as uint8 `images` with their `labels`). For the exact mixtures the PNG shows the true "
        "density next to the samples, and the mean log-likelihood of the samples is compared with "
        "that of exact samples (a gap near 0 means the sampler is exact). Unset options come "
        "from the model's own sampling defaults.",
        epilog="Example: difflab sample --model mnist --sampler dpmpp_2m --steps 10 --guidance 2 "
        "--labels 0-9 --n 64 --out grid.png",
    )
    s.add_argument(
        "--model",
        default="ring2d",
        help="a model name (`difflab models`), a model folder, or an exact mixture: "
        f"{', '.join(EXACT_MODELS)} (default: ring2d)",
    )
    s.add_argument("--sampler", default=None, help="sampler name (see `difflab samplers`)")
    s.add_argument(
        "--steps", type=int, default=None, help="number of grid intervals (NFE depends on sampler)"
    )
    s.add_argument(
        "--schedule",
        default=None,
        help="step grid name (see `difflab schedules`), a grid the model keeps, "
        "optimized:SAMPLER:NFE, or a grid JSON (both from `difflab schedule optimize`)",
    )
    s.add_argument("--n", type=int, default=None, help="number of samples")
    s.add_argument(
        "--labels",
        default=None,
        help=f"class labels, cycled over the samples: {LABEL_FORMS} (default: all classes); "
        "none samples a class-conditional model without a label, from its null class",
    )
    s.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance scale w >= 0 (1 = none; needs a class-conditional model)",
    )
    s.add_argument(
        "--guidance-interval",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        default=None,
        help="guide only at noise levels LO <= sigma <= HI (Kynkäänniemi et al. 2024; HI may be inf)",
    )
    s.add_argument(
        "--guidance-method",
        default="cfg",
        help="how the two predictions combine: a guidance rule of difflab.guidance.available() "
        "(default cfg; apg: adaptive projected guidance, eta 0; cfg_zero_star: optimised scale and "
        "the first step zeroed); see docs/guidance.md",
    )
    s.add_argument(
        "--guidance-rescale",
        type=float,
        default=None,
        help="guidance rescale phi in [0, 1] (Lin et al. 2024; with --guidance-method cfg)",
    )
    s.add_argument(
        "--w2sd",
        metavar="WEAK",
        default=None,
        help="weak-to-strong diffusion (Bai et al. 2025): before each step, denoise one grid step "
        "down with the model and invert back up with WEAK, a weaker version of it (a model name or "
        "folder with the same data and labels, e.g. mnist_small for mnist). This moves x by about "
        "(delta/sigma)(D_model - D_weak), towards where the model is denser than WEAK; 2 more "
        "network evaluations per reflected step; see docs/guidance.md",
    )
    s.add_argument(
        "--w2sd-steps",
        type=int,
        metavar="K",
        default=None,
        help="with --w2sd: reflect only before the first K steps (the paper's lambda; default: "
        "every step but the last)",
    )
    s.add_argument("--seed", type=int, default=0, help="seed; each sample has its own generator")
    s.add_argument("--batch-size", type=int, default=None, help="samples per network batch")
    s.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    s.add_argument("--progress", action="store_true", help="show a progress bar")
    s.add_argument("--out", default="samples.png", help="output PNG (or .npz for raw samples)")
    s.set_defaults(run=run)


def parse_labels(text: str | None, num_classes: int, model: str) -> list[int] | None:
    """The distinct labels of ``--labels`` ("0-9", "3", "1,4,7", "all"; None = all classes), each
    checked against the model's classes; "none": [NULL_LABEL], the null class of classifier-free
    guidance (Ho & Salimans 2022); None for an unconditional model (which "none" also names)."""
    from difflab.core.conditioning import NULL_LABEL

    none = text is not None and text.strip() == "none"
    if num_classes == 0:
        if text is not None and not none:
            raise CliError(f"{model} is unconditional: it takes no --labels")
        return None
    if text is None or text.strip() == "all":
        return list(range(num_classes))
    if none:
        return [NULL_LABEL]
    values: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if m is None:
            raise CliError(f"cannot read --labels {text!r}: give {LABEL_FORMS}")
        lo, hi = int(m[1]), int(m[2] or m[1])
        if hi < lo:
            raise CliError(f"--labels range {part.strip()} runs backwards; write {hi}-{lo}")
        values.extend(v for v in range(lo, hi + 1) if v not in values)
    outside = [v for v in values if v >= num_classes]
    if outside:
        raise CliError(
            f"label {outside[0]} is outside {model}'s classes 0-{num_classes - 1} (--labels {text})"
        )
    return values


def run(args: argparse.Namespace) -> None:
    positive(args.steps, "--steps")
    positive(args.n, "--n")
    positive(args.batch_size, "--batch-size")
    positive(args.seed, "--seed", minimum=0)
    if args.guidance is not None and not args.guidance >= 0:
        raise CliError(f"--guidance must be >= 0 (1 = no guidance), got {args.guidance}")
    _check_guidance_options(args)
    positive(args.w2sd_steps, "--w2sd-steps", minimum=0)
    if args.w2sd_steps is not None and args.w2sd is None:
        raise CliError("--w2sd-steps needs --w2sd WEAK (the weak model to reflect with)")
    if args.model in EXACT_MODELS:
        if args.w2sd is not None:
            raise CliError(f"--w2sd needs a saved model and its weak version, not {args.model}")
        sample_exact(args)
        return
    _sample_saved(args)


def _check_guidance_options(args: argparse.Namespace) -> None:
    """One-line errors for --guidance-interval, --guidance-method (a name of the guidance rule
    registry) and --guidance-rescale."""
    from difflab import guidance
    from difflab.utils.names import unknown_name

    if args.guidance_interval is not None:
        lo, hi = args.guidance_interval
        if not 0 <= lo < hi:
            raise CliError(f"--guidance-interval needs 0 <= LO < HI, got {lo:g} {hi:g}")
    if args.guidance_method not in guidance.available():
        raise CliError(
            str(unknown_name("--guidance-method", args.guidance_method, guidance.available()))
        )
    if args.guidance_rescale is not None:
        if not 0 <= args.guidance_rescale <= 1:
            raise CliError(f"--guidance-rescale must be in [0, 1], got {args.guidance_rescale:g}")
        if args.guidance_method != "cfg":
            raise CliError(
                f"--guidance-rescale applies to --guidance-method cfg, not {args.guidance_method}"
            )


def _device(text: str) -> Any:
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise CliError(f"unknown --device {text!r}: give e.g. cpu, cuda or cuda:1") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {text}: this torch build or machine has no CUDA device")
    return device


def load_model(name: str, device: str) -> Any:
    """The saved model called ``name`` (or in that folder) on ``device``; a CliError otherwise."""
    from difflab import pretrained
    from difflab.utils.names import unknown_name

    known = pretrained.named()
    if name not in known and not _is_path(name):
        raise CliError(str(unknown_name("model", name, [*EXACT_MODELS, *known])))
    with user_errors():
        return pretrained.Model.load(name, _device(device))


def _is_path(name: str) -> bool:
    from pathlib import Path

    return Path(name).exists() or "/" in name or name.startswith((".", "~"))


def _sample_saved(args: argparse.Namespace) -> None:
    from difflab import sampling

    if args.sampler is not None:
        lookup(sampling.info, args.sampler)
    schedule, grid_steps = args.schedule, None
    if schedule is not None and not schedule.startswith("optimized:"):  # the model's own grids
        grid, grid_steps = grid_function(schedule)
        if grid_steps is not None:
            schedule = grid(grid_steps)
            if args.steps is not None and args.steps != grid_steps:
                raise CliError(
                    f"the grid {args.schedule} has {grid_steps} steps, not --steps {args.steps}"
                )
    out = check_output(args.out, (".png", ".npz"))

    begin = time.perf_counter()
    model = load_model(args.model, args.device)
    loaded = time.perf_counter() - begin
    shape = model.shape
    images = len(shape) == 3
    if out.suffix.lower() == ".png" and not (shape == (2,) or (images and shape[0] in (1, 3))):
        raise CliError(
            f"a PNG needs images with 1 or 3 channels or 2-D points; {model.name} makes samples of "
            f"shape {list(shape)} (use --out x.npz)"
        )
    values = parse_labels(args.labels, model.num_classes, model.name)
    null = values is not None and values[0] < 0  # --labels none
    guidance = _null_class_guidance(args, model) if null else args.guidance
    n = args.n or int(model.defaults.get("n", 64))
    labels = None if values is None else [values[i % len(values)] for i in range(n)]
    sampler = args.sampler if args.w2sd is None else _w2sd(args, model)
    with user_errors():
        result = model.generate(
            n,
            labels,
            sampler=sampler,
            steps=args.steps,
            schedule=schedule,
            guidance=guidance,
            guidance_method=args.guidance_method,
            guidance_rescale=args.guidance_rescale,
            guidance_interval=args.guidance_interval,
            seed=args.seed,
            batch_size=args.batch_size,
            progress=args.progress,
        )
    o = result.options
    method = "" if o.get("guidance_rule") is None else f" ({args.guidance_method})"
    interval = (
        ""
        if args.guidance_interval is None
        else " for sigma in [{:g}, {:g}]".format(*args.guidance_interval)
    )
    guided = (
        f", guidance {o['guidance']:g}{method}{interval} ({result.network_evals} network "
        "evaluations per sample)"
        if o["guidance"] != 1 or o.get("guidance_rule") is not None
        else ""
    )
    if args.w2sd is not None:
        r = len(sampler.reflected(result.sigmas))
        guided += (
            f", W2SD reflecting {r} steps with {args.w2sd} ({r} of the NFE and {r} {args.w2sd} "
            "evaluations per sample)"
        )
    classes = (
        ", without a label (the null class)"
        if null
        else ""
        if values is None
        else f", labels {_label_text(values)}"
    )
    summary = (
        f"{model.name}: {n} samples{classes}, {o['sampler']} on the "
        f"{args.schedule or o['schedule']} grid: {o['steps']} steps = {result.nfe} NFE{guided}, "
        f"{result.seconds:.2f} s (model loaded in {loaded:.2f} s)"
    )
    _write(out, result, model, None if null else values, summary)
    print(summary)
    print(f"wrote {out}")


def _null_class_guidance(args: argparse.Namespace, model: Any) -> float:
    """Guidance 1 for samples of the null class, where D(x, y) = D(x) leaves nothing to guide; the
    model must have trained its null class (label dropout > 0)."""
    if not model.null_class:
        raise CliError(
            f"--labels none samples the null class, but {model.name} was trained with "
            "label_dropout 0, so its null class is untrained: give class labels"
        )
    if args.guidance not in (None, 1):
        raise CliError(
            f"--guidance {args.guidance:g} needs class labels: --labels none samples the null "
            "class, which classifier-free guidance leaves unchanged"
        )
    return 1.0


def _w2sd(args: argparse.Namespace, model: Any) -> Any:
    """The W2SD sampler of --w2sd WEAK around --sampler (or the sampler the model or its grid
    names), the model being the strong one; its weak version must share data and labels."""
    from difflab.guidance import W2SD

    weak = load_model(args.w2sd, args.device)
    if tuple(weak.shape) != tuple(model.shape) or weak.num_classes != model.num_classes:
        raise CliError(
            f"--w2sd {args.w2sd} makes samples of shape {list(weak.shape)} with "
            f"{weak.num_classes} classes, {model.name} {list(model.shape)} with "
            f"{model.num_classes}: the weak model must share the model's data and labels"
        )
    with user_errors():
        inner, options = model.sampler(args.sampler, args.schedule)
        return W2SD(weak.denoiser, inner, steps=args.w2sd_steps, options=options or {})


def _label_text(values: list[int]) -> str:
    if values == list(range(values[0], values[-1] + 1)) and len(values) > 2:
        return f"{values[0]}-{values[-1]}"
    return ",".join(map(str, values))


def _write(out: Any, result: Any, model: Any, values: list[int] | None, summary: str) -> None:
    import numpy as np

    from difflab.utils.files import atomic_write_bytes
    from difflab.utils.images import save_png
    from difflab.utils.pixels import to_uint8

    x = result.x.float().cpu()
    labels = (
        result.labels.numpy() if result.labels is not None else np.full(len(x), -1, dtype=np.int64)
    )
    images = x.ndim == 4
    if out.suffix.lower() == ".npz":
        arrays: dict[str, Any] = {"labels": labels, "sigmas": result.sigmas.numpy()}
        if images:
            u8 = to_uint8(x).numpy()
            arrays["images"] = u8[:, 0] if u8.shape[1] == 1 else u8
        else:
            arrays["samples"] = x.numpy()
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(out, buf.getvalue())
        return
    o = result.options
    title = f"{model.name}: {o['sampler']}, {o['steps']} steps, {result.nfe} NFE" + (
        f", guidance {o['guidance']:g}" if o["guidance"] != 1 else ""
    )
    if images:
        save_png(_image_figure(to_uint8(x).numpy(), values, title), out)
    else:
        save_png(_scatter_figure(x.numpy(), title), out)


def _image_figure(u8: Any, values: list[int] | None, title: str) -> Any:
    """A grid with one row per label value (sample i has label values[i mod rows]), the label drawn
    at the left of its row; a square grid for an unconditional model."""
    import numpy as np
    from PIL import ImageFont

    from difflab.utils.images import image_grid, panels

    if values is None:
        grid = image_grid(u8)
    else:
        rows = len(values)
        cols = -(-len(u8) // rows)
        tiles = np.full((rows * cols, *u8.shape[1:]), 255, dtype=np.uint8)
        for i, image in enumerate(u8):
            tiles[(i % rows) * cols + i // rows] = image
        grid = image_grid(tiles, cols, titles=[str(v) for v in values])
    array = np.asarray(grid)
    width = int(ImageFont.load_default(size=14).getlength(title)) + 4  # panels' title font
    if array.shape[1] < width:  # widen with white so that the title is not cut
        array = np.pad(array, ((0, 0), (0, width - array.shape[1]), (0, 0)), constant_values=255)
    return panels([(title, array)])


def _scatter_figure(points: Any, title: str) -> Any:
    import numpy as np

    from difflab.utils.images import panels, scatter

    lo, hi = np.percentile(points, [0.5, 99.5], axis=0)
    center, half = (lo + hi) / 2, 0.6 * float((hi - lo).max() or 1.0)
    extent = (center[0] - half, center[0] + half, center[1] - half, center[1] + half)
    return panels([(title, scatter(points, extent))])
