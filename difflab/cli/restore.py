"""`difflab restore`: solve an inverse problem (inpainting, super-resolution, deblurring) with a saved
image model as the prior, and write input | measurement | restoration as a PNG."""

from __future__ import annotations

import argparse
import time
from typing import Any

from difflab.cli.common import CliError, check_output, positive, user_errors

__all__ = ["add"]


def add(commands: Any) -> None:
    s = commands.add_parser(
        "restore",
        help="restore a measured image (inpaint, superres, deblur) with a diffusion prior",
        description="Measure an image with a known operator (a mask, average pooling or a Gaussian "
        "blur) plus Gaussian noise, then sample the model's posterior given the measurement with "
        "DPS, PiGDM, DDRM or twisted SMC. The image comes from --input (a PNG of the model's size "
        "and channels) or from the MNIST test split (--index, --n). The PNG shows one row per "
        "image: input | measurement | restoration. Class-conditional models restore "
        "unconditionally (the null label -1) unless --label is given.",
        epilog="Example: difflab restore --model mnist --task superres --factor 4 --noise 0.05 "
        "--method ddrm --index 0 --n 8 --out restored.png",
    )
    s.add_argument("--model", default="mnist", help="model name or folder (default: mnist)")
    s.add_argument("--task", required=True, help="inpaint, superres or deblur")
    s.add_argument("--mask", default="center", help="inpaint: center, half or random")
    s.add_argument("--factor", type=int, default=4, help="superres: pooling factor (default 4)")
    s.add_argument("--blur-std", type=float, default=1.0, help="deblur: kernel std in pixels")
    s.add_argument("--noise", type=float, default=0.05, help="measurement noise std (default 0.05)")
    s.add_argument("--method", default="ddrm", help="dps, pigdm, ddrm or smc (default ddrm)")
    s.add_argument("--steps", type=int, default=50, help="grid intervals = NFE (default 50)")
    s.add_argument("--particles", type=int, default=8, help="smc: particles per image")
    s.add_argument(
        "--zeta", type=float, default=1.0, help="dps: step size (default 1, the paper's)"
    )
    s.add_argument("--label", type=int, default=None, help="condition on this class")
    s.add_argument("--input", default=None, help="PNG to restore (default: MNIST test images)")
    s.add_argument("--index", type=int, default=None, help="first MNIST test image (default 0)")
    s.add_argument("--n", type=int, default=None, help="number of MNIST test images (default 4)")
    s.add_argument("--seed", type=int, default=0, help="seed of the measurement noise and sampling")
    s.add_argument("--out", default="restored.png", help="output PNG")
    s.set_defaults(run=run)


def _read_png(path: str, shape: tuple[int, ...], model: str) -> Any:
    """The PNG as [1, C, H, W] in [-1, 1], checked against the model's sample shape."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from difflab.utils.pixels import from_uint8

    if not Path(path).is_file():
        raise CliError(f"--input {path} does not exist")
    c, h, w = shape
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise CliError(f"cannot read --input {path}: {e}") from None
    if image.size != (w, h):
        raise CliError(
            f"--input {path} is {image.size[0]} x {image.size[1]} pixels but {model} takes "
            f"{w} x {h}"
        )
    rgb = np.asarray(image.convert("RGB"))
    gray = bool((rgb == rgb[..., :1]).all())
    if c == 1 and not gray:
        raise CliError(f"--input {path} is a color image but {model} takes grayscale images")
    if c not in (1, 3):
        raise CliError(f"{model} takes {c}-channel samples, which a PNG cannot hold")
    pixels = rgb[..., :1] if c == 1 else rgb
    return from_uint8(np.ascontiguousarray(pixels.transpose(2, 0, 1)))[None]


def _images(args: argparse.Namespace, shape: tuple[int, ...], name: str) -> Any:
    if args.input is not None:
        if args.index is not None or args.n is not None:
            raise CliError("give --input or --index/--n (MNIST test images), not both")
        return _read_png(args.input, shape, name)
    from difflab import data

    if tuple(shape) != (1, 28, 28):
        raise CliError(
            f"{name} makes samples of shape {list(shape)}, not MNIST digits: give --input"
        )
    index, n = args.index or 0, args.n or 4
    positive(index, "--index", minimum=0)
    positive(n, "--n")
    with user_errors():
        test = data.load("mnist", split="test")
    if index + n > len(test):
        raise CliError(f"--index {index} --n {n} runs past the {len(test)} MNIST test images")
    return test[slice(index, index + n)][0]


def _labels(model: Any, label: int | None, n: int) -> Any:
    """--label for every image, or the null label -1 when none is given (the model checks that its
    null class was trained)."""
    if model.num_classes == 0:
        if label is not None:
            raise CliError(f"{model.name} is unconditional: it takes no --label")
        return None
    if label is not None and not 0 <= label < model.num_classes:
        raise CliError(
            f"--label {label} is outside {model.name}'s classes 0-{model.num_classes - 1}"
        )
    with user_errors():
        return model.class_labels(-1 if label is None else label, n)


def run(args: argparse.Namespace) -> None:
    from difflab import pretrained
    from difflab.restoration import Measurement
    from difflab.restoration.restore import METHODS, TASKS, measure, psnr, restore, shown
    from difflab.restoration.restore import task_operator as operator_for
    from difflab.utils.names import unknown_name

    if args.task not in TASKS:
        raise CliError(str(unknown_name("task", args.task, TASKS)))
    if args.method not in METHODS:
        raise CliError(str(unknown_name("method", args.method, METHODS)))
    positive(args.steps, "--steps")
    positive(args.particles, "--particles")
    positive(args.factor, "--factor")
    positive(args.seed, "--seed", minimum=0)
    if not args.noise >= 0:
        raise CliError(f"--noise must be >= 0, got {args.noise}")
    if not args.zeta >= 0:
        raise CliError(f"--zeta must be >= 0, got {args.zeta}")
    out = check_output(args.out, (".png",))
    with user_errors():
        model = pretrained.Model.load(args.model)
    shape = model.shape
    if len(shape) != 3:
        raise CliError(f"{model.name} makes vectors of shape {list(shape)}, not images")
    truth = _images(args, shape, model.name)
    labels = _labels(model, args.label, len(truth))
    with user_errors():
        op = operator_for(
            args.task, shape, mask_kind=args.mask, factor=args.factor, blur_std=args.blur_std,
            seed=args.seed,
        )  # fmt: skip
        schedule = model.defaults["schedule"]  # a distilled model's own sigmas: karras instead
        sigmas = model.grid(schedule if isinstance(schedule, str) else "karras", args.steps)
    options: dict[str, Any] = {"zeta": args.zeta} if args.method == "dps" else {}
    if args.method == "smc":
        options["particles"] = args.particles
    begin = time.perf_counter()
    with user_errors():
        y = measure(op, truth, args.noise, seed=args.seed)
        x = restore(
            model.denoiser, Measurement(op, y, args.noise), sigmas, args.method, seed=args.seed + 1,
            cond=None if labels is None else {"labels": labels}, **options,
        )  # fmt: skip
    seconds = time.perf_counter() - begin
    _write(out, truth, shown(op, y), x, args)
    work = f"{args.steps} NFE" + (f" x {args.particles} particles" if args.method == "smc" else "")
    print(
        f"{model.name}: {args.task} {op!r}, noise {args.noise:g}; {args.method}, {work} per image; "
        f"{len(truth)} image(s) in {seconds:.1f} s; PSNR {float(psnr(x, truth).mean()):.2f} dB "
        f"(the measurement as shown: {float(psnr(shown(op, y), truth).mean()):.2f} dB)"
    )
    print(f"wrote {out}")


def _write(out: Any, truth: Any, measured: Any, restored: Any, args: argparse.Namespace) -> None:
    import numpy as np

    from difflab.utils.images import image_grid, panels, save_png
    from difflab.utils.pixels import to_uint8

    def column(images: Any) -> Any:
        return np.asarray(image_grid(to_uint8(images.clamp(-1, 1)).numpy(), nrow=1, scale=3))

    image = panels(
        [
            ("input", column(truth)),
            ("measurement", column(measured)),
            ("restoration", column(restored)),
        ],
        caption=f"{args.task}, noise {args.noise:g}, {args.method}, {args.steps} steps",
    )
    save_png(image, out)
