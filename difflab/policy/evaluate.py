"""Success rate of a policy in a batched environment: ``evaluate(policy, "metaworld/reach", 50)``."""

from __future__ import annotations

import math
from typing import Any

from difflab.envs import episode_seeds, make, rollout
from difflab.policy.execution import RecedingHorizon
from difflab.policy.model import PolicyModel
from difflab.policy.streaming import StreamingPolicy

__all__ = ["evaluate"]


def evaluate(
    model: PolicyModel,
    env_name: str,
    episodes: int,
    seed: int = 0,
    *,
    num_envs: int = 50,
    streaming: bool = False,
    max_steps: int | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run ``episodes`` episodes (episode i seeded by (seed, i), as ``policy collect`` seeds them)
    with receding-horizon execution (or streaming denoising), ``num_envs`` at a time: success rate
    p and its standard error sqrt(p (1 - p) / n), mean return, network evaluations and
    milliseconds per executed action (policy time only; Chi et al. 2023)."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    env = make(env_name, max_steps)
    if (env.obs_dim, env.act_dim) != (model.obs_dim, model.act_dim):
        raise ValueError(
            f"the policy acts on observations of {model.obs_dim} and actions of {model.act_dim} "
            f"dimensions, {env.name} has {env.obs_dim} and {env.act_dim}"
        )
    policy = StreamingPolicy(model, **options) if streaming else RecedingHorizon(model, **options)
    demos = rollout(env, policy, episode_seeds(seed, episodes), num_envs=num_envs)
    rate = float(demos.success.double().mean())
    nfe_chunk = model.nfe(options.get("sampler"), options.get("steps"))
    if streaming:
        nfe_action = 1.0 + nfe_chunk * policy.chunks_sampled / max(policy.calls, 1)
    else:
        nfe_action = nfe_chunk / policy.action_horizon
    result = {
        "env": demos.env,
        "episodes": episodes,
        "success_rate": rate,
        "success_se": math.sqrt(rate * (1 - rate) / episodes),
        "mean_return": float(demos.returns.mean()),
        "nfe_per_chunk": nfe_chunk,
        "nfe_per_action": nfe_action,
        "ms_per_action": 1e3 * policy.seconds / demos.steps,
        "steps": demos.steps,
        "method": model.method,
        "streaming": streaming,
    }
    if env.mode_names:
        modes = demos.modes
        result["modes"] = {
            name: float((modes == i).double().mean()) for i, name in enumerate(env.mode_names)
        }
    return result
