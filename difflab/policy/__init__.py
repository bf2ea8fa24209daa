"""Layer 4: diffusion policies over action chunks (Chi et al. 2023) on the one denoiser convention.

    policy = PolicyModel.load("runs/policy/model")     # a model folder of type "policy"
    evaluate(policy, "metaworld/reach", 50)            # success rate, ms per action
    RecedingHorizon(policy) / StreamingPolicy(policy)  # difflab.envs policies for N environments

Training is :class:`PolicyTask` of the one training loop (``difflab policy train``).
"""

from difflab.policy.evaluate import evaluate
from difflab.policy.execution import RecedingHorizon, executed
from difflab.policy.model import METHODS, PolicyModel, policy_folder
from difflab.policy.streaming import StreamingPolicy, ladder, streaming_step, token_levels
from difflab.policy.train import DEFAULTS, PolicyTask, ddpm_recipe, load_demos

__all__ = [
    "DEFAULTS",
    "METHODS",
    "PolicyModel",
    "PolicyTask",
    "RecedingHorizon",
    "StreamingPolicy",
    "ddpm_recipe",
    "evaluate",
    "executed",
    "ladder",
    "load_demos",
    "policy_folder",
    "streaming_step",
    "token_levels",
]
