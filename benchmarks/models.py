"""CPU training-step time of a difflab network: forward + backward at one batch size, for each
thread count, precision (fp32, bf16 autocast) and memory format (contiguous, channels_last).

Default network: the class-conditional MNIST UNet (channels 32, mults 1-2-2, 2 residual blocks,
attention at 7x7, 10 classes) at batch 128 on 28x28. Each cell is the best of ``--reps`` timed steps
after one warm-up step (the best is the least disturbed by other processes on a shared machine), as
wall time and as the process's CPU time. On a busy machine the CPU time of a 1-thread run is the
trustworthy number (the wall time then includes waiting for a core); at 2 threads the CPU time also
counts OpenMP's spinning, so only the wall time on an idle machine says what 2 threads gain.

    .venv/bin/python benchmarks/models.py                      # ~20 min on 2 idle cores (bf16 ~6x fp32)
    .venv/bin/python benchmarks/models.py --precisions fp32    # ~3 min
    .venv/bin/python benchmarks/models.py --config '{"type": "dit", "image_size": 28, ...}'

The table goes to stdout as markdown.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from difflab import models

MNIST_UNET = {
    "type": "unet",
    "in_channels": 1,
    "image_size": 28,
    "channels": 32,
    "channel_mult": [1, 2, 2],
    "num_res_blocks": 2,
    "attention_resolutions": [7],
    "num_classes": 10,
}


def step_seconds(
    net: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor | None, bf16: bool, reps: int
) -> tuple[float, float]:
    """Best wall and CPU time of one forward + backward of an MSE loss over ``reps`` steps."""
    t = torch.rand(x.shape[0]) * 1000
    target = torch.randn_like(x)
    wall = cpu = float("inf")
    for i in range(reps + 1):
        net.zero_grad(set_to_none=True)
        start, start_cpu = time.perf_counter(), time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(x, t, labels)
        torch.nn.functional.mse_loss(out.float(), target).backward()
        if i > 0:  # the first step warms up allocators and kernels
            wall = min(wall, time.perf_counter() - start)
            cpu = min(cpu, time.process_time() - start_cpu)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=json.loads, default=MNIST_UNET, help="network config JSON")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"]
    )
    args = parser.parse_args()

    torch.manual_seed(0)
    net = models.build(args.config)
    side, channels = args.config.get("image_size", 32), args.config.get("in_channels", 1)
    shape = (channels, side, side)
    print(models.summary(net, shape).splitlines()[0], flush=True)
    print(f"\nforward + backward, batch {args.batch}, best of {args.reps} (seconds per step)\n")
    print(
        "| threads | precision | memory format | wall s / step | CPU s / step | images / wall s |"
    )
    print("|---|---|---|---|---|---|")
    x = torch.randn(args.batch, *shape)
    labels = torch.randint(0, max(1, net.config.get("num_classes", 0)), (args.batch,))
    if not net.config.get("num_classes", 0):
        labels = None
    for threads in args.threads:
        torch.set_num_threads(threads)
        for bf16 in [p == "bf16" for p in args.precisions]:
            for fmt in (torch.contiguous_format, torch.channels_last):
                net = net.to(memory_format=fmt)
                wall, cpu = step_seconds(net, x.to(memory_format=fmt), labels, bf16, args.reps)
                precision = "bf16 autocast" if bf16 else "fp32"
                name = "channels_last" if fmt == torch.channels_last else "contiguous"
                print(
                    f"| {threads} | {precision} | {name} | {wall:.2f} | {cpu:.2f} | "
                    f"{args.batch / wall:.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
