"""Diffusion policies: saved normalizers, the exact conditional at high NFE, streaming levels and
buffer, receding-horizon indexing, and `difflab policy train / eval` on a tiny budget."""

import json

import pytest
import torch
from torch import nn

from difflab.cli import main
from difflab.core.parameterization import Parameterization
from difflab.data.demos import Demos
from difflab.data.normalization import Normalizer
from difflab.envs import collect
from difflab.policy import (
    PolicyModel,
    RecedingHorizon,
    StreamingPolicy,
    executed,
    token_levels,
)
from difflab.policy.streaming import LADDER, streaming_step
from difflab.testing import GaussianMixture
from difflab.testing.metrics import sliced_w2

TINY = {"type": "temporal_unet", "down_dims": [8, 16], "embed_dim": 8, "groups": 4}


def tiny_policy(obs_dim=4, act_dim=2, horizons=None) -> PolicyModel:
    from difflab import models

    horizons = horizons or {"obs": 2, "pred": 8, "action": 4}
    net = models.build(
        {
            **TINY,
            "dim": act_dim,
            "context_dim": obs_dim,
            "context_length": horizons["obs"],
            "time_embedding": "fourier",
        }
    )
    g = torch.Generator().manual_seed(0)
    obs_norm = Normalizer.fit(torch.randn(100, obs_dim, generator=g) * 3 + 1)
    act_norm = Normalizer.fit(torch.rand(100, act_dim, generator=g) * 0.5, "meanstd")
    return PolicyModel(net, Parameterization("edm", "edm"), obs_norm, act_norm, horizons)


def test_normalizers_and_chunks_round_trip_through_the_saved_policy(tmp_path):
    policy = tiny_policy()
    with torch.no_grad():
        for p in policy.network.parameters():
            p.normal_(0, 0.1)
    loaded = PolicyModel.load(policy.save(tmp_path / "policy"))
    x = torch.randn(5, 2) * 0.3
    for a, b in [
        (policy.act_normalizer, loaded.act_normalizer),
        (policy.obs_normalizer, loaded.obs_normalizer),
    ]:
        assert a.mode == b.mode
        torch.testing.assert_close(b.center_scale(), a.center_scale())
    torch.testing.assert_close(loaded.act_normalizer.unnormalize(loaded.act_normalizer(x)), x)
    history = torch.randn(3, 2, 4)
    a = policy.chunks(history, generator=torch.Generator().manual_seed(1))
    b = loaded.chunks(history, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    assert loaded.config["type"] == "policy" and loaded.horizons == policy.horizons


class ExactNet(nn.Module):
    """x0 = E[a | x, o] of a joint Gaussian mixture over (o, a): the exact conditional denoiser
    as a network of x0 prediction on the VE process (time input sigma)."""

    def __init__(self, mixture: GaussianMixture, obs_dim: int) -> None:
        super().__init__()
        self.denoise = mixture.context_denoiser(list(range(obs_dim)))
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, x, time, context):
        return self.denoise(x.double(), time.double(), context=context.double()).to(x.dtype)


def test_policy_samples_the_exact_conditional_mixture_at_high_nfe():
    # (o, a) in R^1 x R^2: two components whose actions are far apart and whose weights depend on o
    means = torch.tensor([[0.3, -1.0, 0.5], [-0.2, 1.0, -0.5]])
    covs = torch.tensor([[[0.5, 0.1, 0.0], [0.1, 0.05, 0.0], [0.0, 0.0, 0.04]]] * 2)
    mixture = GaussianMixture(torch.tensor([0.5, 0.5]), means, covs)
    identity = Normalizer(1), Normalizer(2)  # centre 0, scale 1
    policy = PolicyModel(
        ExactNet(mixture, 1),
        Parameterization("ve", "x0", time_input="sigma"),
        *identity,
        {"obs": 1, "pred": 1, "action": 1},
        sample={"sampler": "heun", "steps": 40, "sigma_min": 0.002, "sigma_max": 40.0},
    )
    o = torch.full((4000, 1, 1), 0.1)
    chunks = policy.chunks(o, generator=torch.Generator().manual_seed(0))[:, 0]
    exact = mixture.conditional([0], torch.tensor([0.1]))
    reference = exact.sample(4000, torch.Generator().manual_seed(1))
    torch.testing.assert_close(chunks.double().mean(0), exact.mean, atol=0.05, rtol=0)
    floor = sliced_w2(exact.sample(4000, torch.Generator().manual_seed(2)), reference)
    assert sliced_w2(chunks, reference, generator=torch.Generator().manual_seed(3)) < floor + 0.03


def test_streaming_levels_increase_along_the_horizon_and_the_buffer_shifts():
    h = {"obs": 2, "pred": 6, "action": 1}
    levels = token_levels(h, torch.tensor([0.0, 0.5, 1.0]))
    assert levels.shape == (3, 6)
    assert bool((levels[:, 0] == LADDER["sigma_min"]).all())
    assert bool((levels[:, 2:] > levels[:, 1:-1]).all())  # increasing over the future tokens
    torch.testing.assert_close(levels[2, -1].item(), LADDER["sigma_max"])
    torch.testing.assert_close(levels[2, 1:-1], levels[0, 2:])  # u = 1 is the next step's u = 0
    # an exact denoiser D = 0: token To - 1 lands on 0, the others on their next level's scale
    x = torch.ones(1, 6, 1) * levels[2][None, :, None].float()
    stepped = streaming_step(lambda x, s, context: torch.zeros_like(x), x, None, h)
    assert stepped[0, 1, 0] == 0
    torch.testing.assert_close(stepped[0, 2:, 0], levels[0, 2:].float())
    policy = tiny_policy(horizons={"obs": 2, "pred": 8, "action": 1})
    stream = StreamingPolicy(policy, steps=2)
    stream.reset([1, 2])
    obs = torch.randn(2, 4, dtype=torch.float64)
    stream(obs)
    first = stream.buffer.clone()
    stream(obs)
    assert stream.calls == 2 and stream.chunks_sampled == 1  # one network call per control step
    assert first.shape == stream.buffer.shape == (2, 8, 2)


class ChunkOfTimes:
    """A policy whose chunk holds the replanning count k in every entry, entry index as action."""

    method = "diffusion"

    def __init__(self, horizons):
        self.horizons, self.calls = horizons, 0

    def chunks(self, history, generator=None, **options):
        self.calls += 1
        n, h = history.shape[0], self.horizons["pred"]
        steps = torch.arange(h, dtype=torch.float32)[None, :, None].expand(n, h, 2)
        return steps + 100 * self.calls


def test_receding_horizon_executes_the_entries_the_windows_align_with_now():
    # windows: entry To - 1 of a chunk is the action at the current step (actions past the episode's
    # end repeat its last one: Diffusion Policy's pad_after = Ta - 1)
    lengths = torch.tensor([12])
    t = torch.arange(12, dtype=torch.float32)
    demos = Demos(
        t[:, None].expand(12, 3),
        t[:, None].expand(12, 2),
        t,
        lengths,
        torch.tensor([True]),
        torch.tensor([0]),
        torch.tensor([-1]),
        "toy",
        "test",
    )
    to, h, ta = 3, 8, 4
    windows = demos.windows(to, h, ta)
    now = windows.observations[:, -1, 0]
    torch.testing.assert_close(windows.actions[:, to - 1, 0], now)
    torch.testing.assert_close(
        executed(windows.actions, to, ta)[:, :, 0], (now[:, None] + torch.arange(ta)).clamp(max=11)
    )
    model = ChunkOfTimes({"obs": to, "pred": h, "action": ta})
    policy = RecedingHorizon(model, action_horizon=ta)
    policy.reset([0])
    actions = [float(policy(torch.zeros(1, 3))[0, 0]) for _ in range(2 * ta)]
    expected = [100 + to - 1 + i for i in range(ta)] + [200 + to - 1 + i for i in range(ta)]
    assert actions == expected and model.calls == 2


# ---------------------------------------------------------------------------------- command line

TRAIN = [
    "run.steps=30",
    "run.tensorboard=false",
    "run.log_every=10",
    "run.checkpoint_every=30",
    "model.down_dims=[8,16]",
    "model.embed_dim=8",
    "model.groups=4",
    "optim.batch_size=16",
]


@pytest.fixture(scope="module")
def demos_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("demos") / "demos.npz"
    collect("toy/obstacle", 4, seed=0).demos.save(path)
    return path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().rsplit("\n", 1)[-1]
    assert err.startswith("difflab policy: error: "), err
    return err


def test_train_then_eval_from_the_command_line(tmp_path, capsys, demos_file):
    run = tmp_path / "run"
    args = ["policy", "train", "--config", "configs/policy_obstacle.toml", "--run-dir", str(run)]
    assert main([*args, f"data.demos={demos_file}", *TRAIN]) == 0
    assert f"wrote {run / 'model'}" in capsys.readouterr().out
    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "policy",
                "eval",
                "--model",
                str(run),
                "--env",
                "toy/obstacle",
                "--episodes",
                "3",
                "--seed",
                "1",
                "--sampler",
                "euler",
                "--steps",
                "2",
                "--max-steps",
                "20",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "success" in printed and "ms / action" in printed and "mean return" in printed
    result = json.loads(out.read_text())
    assert result["episodes"] == 3 and result["nfe_per_action"] == 2 / 8
    assert {"success_rate", "episodes", "nfe_per_action", "ms_per_action"} <= set(result)


def test_mse_and_ddpm_baselines_train_and_act(tmp_path, capsys, demos_file):
    for method, sampler in (("mse", []), ("ddpm", ["--sampler", "diffusers_ddim"])):
        run = tmp_path / method
        args = ["policy", "train", "--config", "configs/policy_obstacle.toml", "--run-dir"]
        assert (
            main([*args, str(run), f"data.demos={demos_file}", f"policy.method={method}", *TRAIN])
            == 0
        )
        assert (
            main(
                [
                    "policy",
                    "eval",
                    "--model",
                    str(run / "model"),
                    "--env",
                    "toy/obstacle",
                    "--episodes",
                    "2",
                    "--max-steps",
                    "10",
                    *sampler,
                ]
            )
            == 0
        )
        assert PolicyModel.load(run).method == method
    capsys.readouterr()


def test_bad_input_is_one_line_with_exit_status_2(tmp_path, capsys, demos_file):
    train = ["policy", "train", "--config", "configs/policy_obstacle.toml", "--run-dir"]
    assert main([*train, str(tmp_path / "a"), "data.env=toy/nowhere", *TRAIN]) == 2
    assert "unknown environment" in one_line_error(capsys)
    missing = tmp_path / "missing.npz"
    assert main([*train, str(tmp_path / "b"), f"data.demos={missing}", *TRAIN]) == 2
    assert "does not exist" in one_line_error(capsys)
    wrong = tmp_path / "wrong.npz"
    demos = Demos.load(demos_file)
    Demos(
        demos.observations[:, :3],
        demos.actions,
        demos.rewards,
        demos.lengths,
        demos.success,
        demos.seeds,
        demos.modes,
        demos.env,
        demos.policy,
    ).save(wrong)
    assert main([*train, str(tmp_path / "c"), f"data.demos={wrong}", *TRAIN]) == 2
    assert "observations of 3" in one_line_error(capsys)
    assert (
        main(
            [
                "policy",
                "eval",
                "--model",
                "difflab/pretrained/moons",
                "--env",
                "toy/obstacle",
                "--episodes",
                "1",
            ]
        )
        == 2
    )
    assert "not a policy model" in one_line_error(capsys)
    assert (
        main(
            [
                "policy",
                "eval",
                "--model",
                str(tmp_path / "none"),
                "--env",
                "toy/obstacle",
                "--episodes",
                "1",
            ]
        )
        == 2
    )
    assert "does not exist" in one_line_error(capsys)
