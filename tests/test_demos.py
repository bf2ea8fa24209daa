"""Demonstration files (.npz, never pickled): round trips, refusals by name, Diffusion Policy's windows
and padding, and normalization."""

import numpy as np
import pytest
import torch

from difflab.data.demos import Demos, Windows
from difflab.data.normalization import Normalizer
from difflab.utils.weights import load_weights, save_weights


def make_demos(lengths=(3, 5), env="toy/obstacle") -> Demos:
    """Episodes whose step r (over all episodes) has observation (r, 100 + r) and action 1000 + r."""
    rows = torch.arange(sum(lengths), dtype=torch.float32)
    return Demos(
        observations=torch.stack([rows, 100 + rows], 1),
        actions=(1000 + rows)[:, None],
        rewards=rows / 10,
        lengths=torch.tensor(lengths),
        success=torch.tensor([i % 2 == 0 for i in range(len(lengths))]),
        seeds=torch.arange(len(lengths)) + 40,
        modes=torch.full((len(lengths),), -1),
        env=env,
        policy="test",
    )


def diffusion_policy_windows(demos: Demos, to: int, h: int, ta: int) -> Windows:
    """Diffusion Policy's own indexing (diffusion_policy/common/sampler.py: create_indices and
    SequenceSampler.sample_sequence with pad_before = To - 1, pad_after = Ta - 1), step by step."""
    obs, act = [], []
    for start, length in zip(demos.starts.tolist(), demos.lengths.tolist()):
        for idx in range(-(to - 1), length - h + (ta - 1) + 1):
            lo, hi = max(idx, 0), min(idx + h, length)
            sample = list(range(start + lo, start + hi))
            front, back = lo - idx, idx + h - hi  # padded with the first / last element
            rows = [sample[0]] * front + sample + [sample[-1]] * back
            obs.append(demos.observations[rows[:to]])
            act.append(demos.actions[rows])
    return Windows(torch.stack(obs), torch.stack(act))


def test_windows_pad_at_episode_boundaries():
    demos = make_demos()
    w = demos.windows(obs_horizon=2, pred_horizon=4)
    assert w.observations.shape == (8, 2, 2) and w.actions.shape == (8, 4, 1)  # one per step
    first, last = 0, 2  # episode 0 is rows 0..2
    assert w.observations[first, :, 0].tolist() == [0, 0]  # first observation repeated
    assert w.actions[first, :, 0].tolist() == [1000, 1000, 1001, 1002]
    assert w.observations[last, :, 0].tolist() == [1, 2]
    assert w.actions[last, :, 0].tolist() == [1001, 1002, 1002, 1002]  # last action repeated
    assert w.observations[3, :, 0].tolist() == [3, 3]  # episode 1 never reaches into episode 0
    assert w.actions[3, :, 0].tolist() == [1003, 1003, 1004, 1005]


@pytest.mark.parametrize(
    ("to", "h", "ta"), [(1, 1, 1), (2, 4, 2), (2, 16, 8), (3, 6, 4), (2, 5, 4)]
)
def test_windows_equal_diffusion_policys_sampler(to, h, ta):
    demos = make_demos((1, 7, 2, 12, 16, 3))
    ours, theirs = demos.windows(to, h, ta), diffusion_policy_windows(demos, to, h, ta)
    assert torch.equal(ours.observations, theirs.observations)
    assert torch.equal(ours.actions, theirs.actions)


def test_windows_check_their_horizons():
    demos = make_demos()
    with pytest.raises(ValueError, match="1 <= obs_horizon <= pred_horizon"):
        demos.windows(3, 2)
    with pytest.raises(ValueError, match=r"action_horizon must lie in .* = \[1, 3\], got 4"):
        demos.windows(2, 4, 4)


def test_save_load_round_trip(tmp_path):
    demos = make_demos((4, 2, 6))
    path = demos.save(tmp_path / "d.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz"]  # no temporary file left
    loaded = Demos.load(path)
    assert all(
        torch.equal(getattr(loaded, n), getattr(demos, n))
        for n in ("observations", "actions", "rewards", "lengths", "success", "seeds", "modes")
    )
    assert (loaded.env, loaded.policy, loaded.difflab_version) == (
        "toy/obstacle",
        "test",
        demos.difflab_version,
    )
    assert loaded.starts.tolist() == [0, 4, 6] and loaded.returns.tolist() == pytest.approx(
        [0.6, 0.9, 5.1]
    )


def write(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_load_refuses_files_by_name(tmp_path):
    good = dict(np.load(make_demos().save(tmp_path / "good.npz")))
    cases = {
        "pickled Python objects": {**good, "seeds": np.array([None, 1], dtype=object)},
        "not a difflab demonstrations file": {"samples": np.zeros((3, 2))},
        "lacks the arrays actions": {k: v for k, v in good.items() if k != "actions"},
        "lengths must be >= 1 and add up to the 8 steps": {**good, "lengths": np.array([3, 4])},
        "2 episodes but success of shape": {**good, "success": np.array([True])},
        "episode starts do not match": {**good, "starts": np.array([0, 2])},
        "observations contain NaN": {**good, "observations": np.full((8, 2), np.nan, np.float32)},
        "format version 9": {**good, "format_version": np.array(9)},
        "env must be one string": {**good, "env": np.array(3)},
    }
    for message, arrays in cases.items():
        with pytest.raises(ValueError, match=message) as e:
            Demos.load(write(tmp_path / "bad.npz", **arrays))
        assert "\n" not in str(e.value) and "bad.npz" in str(e.value)
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="lacks the format's signature"):
        Demos.load(tmp_path / "text.npz")
    with pytest.raises(ValueError, match=r"expected a \.npz file"):
        Demos.load(tmp_path / "d.npy")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Demos.load(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match=r"saved as \.npz"):
        make_demos().save(tmp_path / "d.npy")


def test_subset_and_concat():
    demos = make_demos((3, 5, 2))
    part = demos.subset(demos.success)  # episodes 0 and 2
    assert part.lengths.tolist() == [3, 2] and part.observations[:, 0].tolist() == [0, 1, 2, 8, 9]
    both = Demos.concat([part, demos.subset(torch.tensor([1]))])
    assert both.seeds.tolist() == [40, 42, 41] and both.steps == demos.steps
    with pytest.raises(ValueError, match="cannot join"):
        Demos.concat([part, make_demos(env="metaworld/reach-v3")])


@pytest.mark.parametrize("mode", ["minmax", "meanstd"])
def test_normalization_round_trips_and_saves_with_weights(tmp_path, mode):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 3, generator=g) * torch.tensor([5.0, 0.1, 1.0]) + torch.tensor(
        [2.0, -1, 0]
    )
    x[:, 2] = 0.25  # a constant dimension is centred only
    norm = Normalizer.fit(x, mode)
    y = norm(x)
    assert y[:, 2].abs().max() == 0
    if mode == "minmax":
        assert y[:, :2].min(0).values.tolist() == pytest.approx([-1, -1], abs=1e-6)
        assert y[:, :2].max(0).values.tolist() == pytest.approx([1, 1], abs=1e-6)
    else:
        assert y[:, :2].mean(0).tolist() == pytest.approx([0, 0], abs=1e-5)
        assert y[:, :2].std(0, correction=0).tolist() == pytest.approx([1, 1], abs=1e-5)
    assert torch.allclose(norm.unnormalize(y), x, atol=1e-5)
    save_weights(tmp_path / "n.safetensors", norm.state_dict())
    again = Normalizer(3, mode)
    again.load_state_dict(load_weights(tmp_path / "n.safetensors"))
    assert torch.equal(again(x), y)
    with pytest.raises(ValueError, match="unknown normalization mode"):
        Normalizer(3, "zscore")


def test_demos_normalizers_fit_observations_and_actions():
    demos = make_demos()
    obs, act = demos.normalizers()
    scaled = act(demos.actions)
    assert (obs.dim, act.dim) == (2, 1) and (scaled.min(), scaled.max()) == (-1, 1)
