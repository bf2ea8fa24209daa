"""Reward and preference fine-tuning (layer 4): aligning a pretrained diffusion model to a reward or to
preferences, each method on the one training loop (:mod:`~difflab.finetune.train`,
``difflab finetune``):

- :mod:`~difflab.finetune.ddpo`: PPO on the denoising MDP (Black et al. 2023);
- :mod:`~difflab.finetune.dpok`: policy gradient with the chains' KL to the base (Fan et al. 2023);
- :mod:`~difflab.finetune.draft`: the reward backpropagated through the last K sampler steps
  (Clark et al. 2023; AlignProp, Prabhudesai et al. 2023);
- :mod:`~difflab.finetune.dpo`: Diffusion-DPO on preference pairs (Wallace et al. 2023);
- :mod:`~difflab.finetune.d3po`: DPO on the model's own trajectories (Yang et al. 2024).

They build on the rewards (:mod:`~difflab.finetune.rewards`: ``classifier:K``, ``ink``,
``linear:w``, ``quadratic``, any callable), the samplers' trajectories with log-probabilities
(:mod:`difflab.sampling`), the steps' KL to the base (:mod:`~difflab.finetune.kl`), LoRA adapters
(:mod:`difflab.models.lora`) and are judged against the exact KL-regularized optimum
(:mod:`difflab.testing.tilted`): ``method.beta`` is its beta in every method."""

from difflab.finetune.rewards import Reward, available, checked, get, register
from difflab.finetune.train import DEFAULTS, METHODS, FinetuneTask, finetune, method_config

__all__ = [
    "DEFAULTS",
    "METHODS",
    "FinetuneTask",
    "Reward",
    "available",
    "checked",
    "finetune",
    "get",
    "method_config",
    "register",
]
