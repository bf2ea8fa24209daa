"""`difflab edit`: invert an image with a model and re-generate it under another class label; writes
input | reconstruction | edit side by side."""

from __future__ import annotations

import argparse
from typing import Any

from difflab.cli.common import CliError, check_output, lookup, positive, user_errors

__all__ = ["add", "read_image"]

SDEDIT = "sdedit"


def add(commands: Any) -> None:
    e = commands.add_parser(
        "edit",
        help="edit an image: invert it, then re-generate it under another class label",
        description="Invert an input image to the model's noise (exactly for edict, bdia and "
        "direct; see docs/inversion.md), sample that noise back under the source label (the "
        "reconstruction) and under --to-label (the edit: the digit's style, another class), "
        "and write a PNG of input | reconstruction | edit. --method sdedit instead noises the "
        "input to a fraction --strength of the grid and samples it under --to-label.",
        epilog="Example: difflab edit --model mnist --input digit.png --to-label 3 --method "
        "edict --out edited.png",
    )
    e.add_argument("--model", default="mnist", help="a model name (`difflab models`) or folder")
    e.add_argument("--input", required=True, help="input PNG of the model's size and channels")
    e.add_argument("--to-label", type=int, required=True, help="the class to edit into")
    e.add_argument(
        "--from-label",
        type=int,
        default=None,
        help="the input's class, used for inversion and reconstruction; -1 is the unconditional "
        "null class (default: the shipped MNIST classifier's prediction for an MNIST model, "
        "else -1)",
    )
    e.add_argument(
        "--method",
        default="edict",
        help="edict, bdia, ddim, dpmpp_2m, null_text, direct or sdedit (default: edict)",
    )
    e.add_argument("--steps", type=int, default=10, help="grid intervals (default 10)")
    e.add_argument("--schedule", default="karras", help="step grid name (default karras)")
    e.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance scale, for inversion and sampling alike (default: the "
        "model's sampling guidance)",
    )
    e.add_argument(
        "--strength",
        type=float,
        default=0.6,
        help="sdedit: the fraction of the grid re-sampled, in (0, 1] (default 0.6)",
    )
    e.add_argument("--seed", type=int, default=0, help="sdedit's noise seed (default 0)")
    e.add_argument("--out", default="edited.png", help="output PNG (default edited.png)")
    e.set_defaults(run=run)


def read_image(path: str, shape: tuple[int, ...], model: str) -> Any:
    """The PNG at ``path`` as a float tensor [1, C, H, W] in [-1, 1], checked against the model's
    sample shape (an RGB file whose channels are equal counts as grayscale)."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from difflab.utils.pixels import from_uint8

    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            rgb = np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise CliError(f"--input {path} does not exist") from None
    except (UnidentifiedImageError, OSError) as err:
        raise CliError(f"cannot read --input {path} as an image: {err}") from None
    channels, height, width = shape
    if rgb.shape[:2] != (height, width):
        raise CliError(
            f"--input {path} is {rgb.shape[1]}x{rgb.shape[0]} pixels but {model} takes "
            f"{width}x{height} images"
        )
    gray = bool((rgb == rgb[..., :1]).all())
    if channels == 1 and not gray:
        raise CliError(
            f"--input {path} is a color image ({mode}) but {model} takes 1-channel (grayscale) "
            "images"
        )
    pixels = rgb[..., :1] if channels == 1 else rgb
    return from_uint8(np.ascontiguousarray(pixels.transpose(2, 0, 1))[None])


def _check_args(args: argparse.Namespace, methods: list[str]) -> None:
    from difflab.utils.names import unknown_name

    if args.method not in methods:
        raise CliError(str(unknown_name("--method", args.method, methods)))
    positive(args.steps, "--steps", minimum=2)
    positive(args.seed, "--seed", minimum=0)
    if args.guidance is not None and not args.guidance >= 0:
        raise CliError(f"--guidance must be >= 0 (1 = none), got {args.guidance}")
    if not 0 < args.strength <= 1:
        raise CliError(f"--strength must be in (0, 1], got {args.strength}")


def _classify(x: Any, model: Any) -> int:
    """The input's class by the shipped MNIST classifier for a 10-class MNIST model, else -1."""
    from difflab.metrics import mnist_features

    if model.shape != (1, 28, 28) or model.num_classes != 10:
        return -1
    if not str(model.config["data"].get("name", "")).startswith("mnist"):
        return -1
    return int(mnist_features(x)[1].argmax(1)[0])


def _check_labels(args: argparse.Namespace, model: Any) -> None:
    classes = model.num_classes
    if classes == 0:
        raise CliError(f"{model.name} is unconditional: it has no classes to edit into")
    if not 0 <= args.to_label < classes:
        raise CliError(
            f"--to-label {args.to_label} is outside {model.name}'s classes 0-{classes - 1}"
        )
    if args.from_label is not None and not -1 <= args.from_label < classes:
        raise CliError(
            f"--from-label {args.from_label} is outside {model.name}'s classes 0-{classes - 1} "
            "(or -1, the null class)"
        )


def run(args: argparse.Namespace) -> None:
    import torch

    from difflab import inversion, pretrained, schedules
    from difflab.models.class_embedding import embedding_denoiser, null_embedding

    _check_args(args, [*inversion.available(), SDEDIT])
    out = check_output(args.out, (".png",))
    with user_errors():
        lookup(schedules.get, args.schedule)
        model = pretrained.Model.load(args.model)
    if len(model.shape) != 3:
        raise CliError(f"{model.name} makes vectors of shape {list(model.shape)}, not images")
    _check_labels(args, model)
    x = read_image(args.input, model.shape, model.name)
    guessed = args.from_label is None
    if guessed:
        args.from_label = _classify(x, model)
    with user_errors():  # the model checks its null class for the guidance and label -1
        guidance = model.guidance_rule(args.guidance).scale
        model.class_labels(args.from_label, 1)
    source = {"labels": torch.tensor([args.from_label])}
    target = {"labels": torch.tensor([args.to_label])}
    lo, hi = model.process.sigma_min, model.process.sigma_max
    with user_errors(), torch.no_grad():
        if args.method == SDEDIT:
            sigmas = model.grid(args.schedule, args.steps, lo, hi)
            tail = sigmas[-1 - max(1, round(args.strength * args.steps)) :]
            seed = torch.Generator().manual_seed(args.seed)
            common = {"guidance": guidance, "generator": seed}
            recon = inversion.sdedit(model.denoiser, x, tail, cond=source, **common)
            seed.manual_seed(args.seed)
            edited = inversion.sdedit(model.denoiser, x, tail, cond=target, **common)
        else:
            sigmas = model.grid(args.schedule, args.steps + 1, lo, hi)  # down to sigma_min, then 0
            den, options = model.denoiser, {}
            if args.method == "null_text":
                den = embedding_denoiser(model.denoiser, model.network)
                options["null"] = {"class_embedding": null_embedding(model.network, 1)}
            result = inversion.edit(
                den,
                x,
                sigmas,
                method=args.method,
                source=source,
                target=target,
                guidance=guidance,
                **options,
            )
            recon, edited = result.reconstruction, result.edited
    error = float((recon - x).square().mean().sqrt())
    _write(out, [x, recon, edited], args, model)
    print(
        f"{model.name}: {args.method}, {args.steps} steps, guidance {guidance:g}: label "
        f"{args.from_label}{' (MNIST classifier)' if guessed else ''} -> {args.to_label}; "
        f"reconstruction RMS error {error:.2e} "
        "(images in [-1, 1])"
    )
    print(f"wrote {out}")


def _write(out: Any, images: list[Any], args: argparse.Namespace, model: Any) -> None:
    import numpy as np
    import torch

    from difflab.utils.images import panels, save_png
    from difflab.utils.pixels import to_uint8

    scale = max(1, 160 // max(model.shape[1:]))
    tiles = to_uint8(torch.cat(images)).numpy().transpose(0, 2, 3, 1)
    tiles = np.repeat(np.repeat(tiles, scale, 1), scale, 2)
    if tiles.shape[-1] == 1:
        tiles = np.repeat(tiles, 3, -1)
    names = ["input", "reconstruction", f"edit: {args.to_label}"]
    caption = f"{args.method}, {args.steps} steps, label {args.from_label} -> {args.to_label}"
    save_png(panels(list(zip(names, tiles)), caption), out)
