"""Diffusion Policy's own samplers, as its authors and LeRobot ship them: diffusers' DDPMScheduler
(100 steps) and DDIMScheduler (10 steps) on a policy trained with the DDPM recipe (Chi et al. 2023:
eps-prediction, squaredcos_cap_v2 betas, 100 timesteps, ``clip_sample`` on); they need diffusers
(the ``interop`` extra).

    x_T ~ N(0, I);  for t in scheduler.timesteps: x = scheduler.step(net(x, t, o), t, x).prev_sample

Each row's noise comes from its own generator (diffusers' ``randn_tensor`` takes a list), so a chunk
does not depend on its batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["SCHEDULERS", "scheduler", "scheduler_sample"]

SCHEDULERS = {"diffusers_ddpm": 100, "diffusers_ddim": 10}  # name -> the recipe's step count


def scheduler(name: str, num_train_timesteps: int) -> object:
    """Diffusion Policy's DDPMScheduler / LeRobot's DDIMScheduler configuration (Chi et al. 2023)."""
    try:
        from diffusers import DDIMScheduler, DDPMScheduler
    except ImportError:
        raise ImportError(
            f"sampler {name!r} needs diffusers: pip install -c constraints.txt 'difflab[interop]'"
        ) from None
    common = {
        "num_train_timesteps": num_train_timesteps,
        "beta_start": 1e-4,
        "beta_end": 2e-2,
        "beta_schedule": "squaredcos_cap_v2",
        "clip_sample": True,
        "prediction_type": "epsilon",
    }
    if name == "diffusers_ddpm":
        return DDPMScheduler(variance_type="fixed_small", **common)
    return DDIMScheduler(set_alpha_to_one=True, steps_offset=0, **common)


@torch.no_grad()
def scheduler_sample(
    network: nn.Module,
    name: str,
    steps: int,
    num_train_timesteps: int,
    z: Tensor,
    context: Tensor,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> Tensor:
    """The normalized chunk x_0 from unit noise ``z`` [N, H, A] by diffusers' scheduler ``name``
    at ``steps`` steps, ``network(x_t, t, context=o)`` predicting eps (Ho et al. 2020; Song et al.
    2021 for DDIM)."""
    sched = scheduler(name, num_train_timesteps)
    sched.set_timesteps(steps)
    gen = list(generator) if isinstance(generator, Sequence) else generator
    x = z * sched.init_noise_sigma
    for t in sched.timesteps:
        time = torch.full((len(x),), float(t), device=x.device)
        eps = network(x, time, context=context)
        x = sched.step(eps, t, x, generator=gen).prev_sample
    return x
