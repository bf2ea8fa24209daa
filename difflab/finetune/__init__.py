"""Reward and preference fine-tuning (layer 4): aligning a pretrained diffusion model to a reward or to
preferences. Now the rewards, by the names the command line accepts (:mod:`~difflab.finetune.rewards`:
``classifier:K``, ``ink``, ``linear:w``, ``quadratic``, any callable); the methods (DDPO, DRaFT,
Diffusion-DPO, ...) are to come, on top of the samplers' trajectories with log-probabilities
(:mod:`difflab.sampling`), LoRA adapters (:mod:`difflab.models.lora`) and the exact KL-regularized
optimum (:mod:`difflab.testing.tilted`) they are judged against."""

from difflab.finetune.rewards import Reward, available, checked, get, register

__all__ = ["Reward", "available", "checked", "get", "register"]
