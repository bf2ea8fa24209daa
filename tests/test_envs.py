"""Batched control environments (MetaWorld for real, and the toy obstacle task), rollouts and
demonstration collection: shapes, seeds, batch independence, the experts, the toy's two modes and
why the mean action fails there."""

import sys

import pytest
import torch

from difflab.data.demos import Demos
from difflab.envs import collect, episode_seeds, make, rollout
from difflab.envs.obstacle import RADIUS, ObstacleEnv, demonstration


def same_episodes(a: Demos, b: Demos) -> bool:
    names = ("observations", "actions", "rewards", "lengths", "success", "seeds", "modes")
    return all(torch.equal(getattr(a, n), getattr(b, n)) for n in names)


@pytest.fixture(scope="module")
def reach():
    return make("metaworld/reach", max_steps=100)


def test_metaworld_shapes_clipping_and_step_limit():
    env = make("metaworld/drawer-close-v3", max_steps=4)
    assert (env.name, env.obs_dim, env.act_dim, env.max_steps) == (
        "metaworld/drawer-close-v3",
        39,
        4,
        4,
    )
    obs = env.reset([3, 4])
    assert obs.shape == (2, 39) and obs.dtype == torch.float64
    for t in range(4):
        step = env.step(torch.tensor([[9.0, 0, 0, 0], [0, 0, 0, 0]]))  # 9 is clipped to 1
        assert step.observations.shape == (2, 39) and step.rewards.shape == (2,)
        assert step.success.dtype == torch.bool and step.done.tolist() == [t == 3] * 2
    after = env.step(torch.ones(2, 4))  # ended rows stay as they were
    assert torch.equal(after.observations, step.observations) and not after.rewards.any()
    with pytest.raises(ValueError, match=r"expected actions \[2, 4\]"):
        env.step(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="NaN"):
        env.step(torch.full((2, 4), float("nan")))


def test_metaworld_seeds_fix_the_episode(reach):
    first = reach.reset([11])
    assert torch.equal(first, reach.reset([11]))
    assert not torch.equal(first[:, 36:], reach.reset([12])[:, 36:])  # another goal
    one = rollout(reach, reach.expert(), [11])
    assert bool(one.success.all()) and same_episodes(one, rollout(reach, reach.expert(), [11]))


def test_metaworld_batch_of_three_equals_three_single_runs():
    env = make("metaworld/push", max_steps=150)
    seeds = episode_seeds(5, 3)
    batched = rollout(env, env.expert(), seeds, num_envs=3)
    alone = Demos.concat([rollout(env, env.expert(), [s], num_envs=1) for s in reversed(seeds)])
    assert same_episodes(batched, alone.subset(torch.tensor([2, 1, 0])))
    assert bool(batched.success.all()) and batched.env == "metaworld/push-v3"
    assert batched.policy == "metaworld.policies.SawyerPushV3Policy"


def test_metaworld_task_names():
    assert make("metaworld/reach-v3").name == make("metaworld/reach").name == "metaworld/reach-v3"
    with pytest.raises(ValueError, match="unknown MetaWorld task 'rech'; nearest: reach") as e:
        make("metaworld/rech")
    assert "\n" not in str(e.value) and "window-open" in str(e.value)
    with pytest.raises(
        ValueError, match=r"unknown environment 'toy/obstcle'\. Did you mean 'toy/obstacle'"
    ):
        make("toy/obstcle")


def test_metaworld_without_the_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "metaworld", None)  # import metaworld now fails
    with pytest.raises(ImportError, match=r"optional extra 'policy'.*difflab\[policy\]"):
        make("metaworld/reach")


def test_episode_seeds_are_distinct_across_runs():
    a, b = episode_seeds(0, 100), episode_seeds(1, 100)
    assert len(set(a) | set(b)) == 200 and episode_seeds(0, 3) == a[:3]
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        episode_seeds(-1, 3)


def test_toy_demonstrator_succeeds_in_both_modes():
    env = ObstacleEnv()
    demos = rollout(env, env.expert(), episode_seeds(0, 60), num_envs=60)
    assert bool(demos.success.all())
    assert demos.returns.tolist() == [1.0] * 60  # reward 1 on the step that succeeds
    share = torch.bincount(demos.modes, minlength=2) / 60
    assert env.mode_names == ("left", "right") and share.min() >= 0.3, share
    near = torch.linalg.vector_norm(demos.observations[:, :2].double(), dim=1)
    assert near.min() > RADIUS  # every recorded position clears the obstacle
    assert demos.actions.abs().max() <= 1


def test_toy_episode_does_not_depend_on_the_batch():
    env = ObstacleEnv()
    seeds = episode_seeds(3, 3)
    batched = rollout(env, env.expert(), seeds, num_envs=3)
    alone = Demos.concat([rollout(env, env.expert(), [s], num_envs=1) for s in seeds])
    assert same_episodes(batched, alone)


class MeanOfModes:
    """The average of the demonstrator's left and right actions: what regressing the mean learns."""

    name = "mean of the two modes"

    def reset(self, seeds):
        pass

    def __call__(self, observations):
        n = len(observations)
        side, detour = (
            torch.ones(n, dtype=torch.float64),
            torch.full((n,), 0.65, dtype=torch.float64),
        )
        left, right = (
            demonstration(observations, -side, detour),
            demonstration(observations, side, detour),
        )
        return (left + right) / 2


def test_toy_mean_action_walks_into_the_obstacle():
    env = ObstacleEnv()
    demos = rollout(env, MeanOfModes(), episode_seeds(0, 20), num_envs=20)
    assert not demos.success.any() and (demos.modes == -1).all()  # never passed the obstacle
    assert (demos.observations[:, 0] == 0).all()  # it stays on the axis ...
    assert (demos.lengths < env.max_steps).all()  # ... and ends early: a collision


def test_collect_keeps_successes_and_round_trips(tmp_path):
    result = collect("metaworld/reach", 3, seed=7)
    assert (result.episodes, result.successes, result.success_rate) == (3, 3, 1.0)
    assert result.steps == result.demos.steps and result.demos.seeds.tolist() == episode_seeds(7, 3)
    loaded = Demos.load(result.demos.save(tmp_path / "reach.npz"))
    assert same_episodes(loaded, result.demos) and loaded.env == "metaworld/reach-v3"
    assert loaded.policy == "metaworld.policies.SawyerReachV3Policy"


def test_collect_drops_failures_unless_asked():
    with pytest.raises(ValueError, match="succeeded in none of 4 episodes"):
        collect("toy/obstacle", 4, max_steps=5)  # too short to arrive
    kept = collect("toy/obstacle", 4, max_steps=5, keep_failures=True)
    assert kept.demos.episodes == 4 and kept.demos.lengths.tolist() == [5] * 4
    assert kept.successes == 0
    with pytest.raises(ValueError, match="episodes must be >= 1"):
        collect("toy/obstacle", 0)
