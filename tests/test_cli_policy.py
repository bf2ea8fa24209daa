"""`difflab policy collect` on a tiny budget, and its one-line errors (exit status 2)."""

import sys

import pytest

from difflab.cli import main
from difflab.data.demos import Demos
from difflab.envs import episode_seeds


def one_line_error(capsys, after_progress: bool = False) -> str:
    """stderr: one error line (after the progress bar when the work had begun)."""
    err = capsys.readouterr().err.strip()
    err = err.rsplit("\n", 1)[-1] if after_progress else err
    assert err.startswith("difflab policy: error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize("env", ["metaworld/reach", "toy/obstacle"])
def test_collect_writes_demonstrations(tmp_path, capsys, env):
    out = tmp_path / "demos.npz"
    assert (
        main(
            ["policy", "collect", "--env", env, "--episodes", "3", "--seed", "4", "--out", str(out)]
        )
        == 0
    )
    report = capsys.readouterr()
    demos = Demos.load(out)
    assert demos.seeds.tolist() == episode_seeds(4, 3) and bool(demos.success.all())
    assert f"expert success 3/3 (1.000); kept 3 episodes, {demos.steps} steps" in report.out
    assert f"wrote {out}" in report.out and "3/3" in report.err  # the progress bar


def test_collect_keeps_failures_when_asked(tmp_path, capsys):
    out = tmp_path / "demos.npz"
    args = ["policy", "collect", "--env", "toy/obstacle", "--episodes", "2", "--out", str(out)]
    assert main([*args, "--max-steps", "3"]) == 2
    assert "succeeded in none of 2 episodes" in one_line_error(capsys, after_progress=True)
    assert main([*args, "--max-steps", "3", "--keep-failures"]) == 0
    assert Demos.load(out).lengths.tolist() == [3, 3]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--env", "metaworld/rech"], "unknown MetaWorld task 'rech'; nearest: reach"),
        (["--env", "mujoco/reach"], "unknown environment 'mujoco/reach'"),
        (["--episodes", "0"], "--episodes must be >= 1, got 0"),
        (["--seed", "-1"], "--seed must be >= 0, got -1"),
        (["--out", "nowhere/demos.npz"], "folder nowhere does not exist"),
        (["--out", "demos.pkl"], "--out must end in .npz"),
    ],
)
def test_collect_bad_input_is_one_line(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    base = {"--env": "toy/obstacle", "--episodes": "2", "--seed": "0", "--out": "demos.npz"}
    base.update(zip(args[::2], args[1::2]))
    assert main(["policy", "collect", *[x for kv in base.items() for x in kv]]) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "demos.npz").exists()


def test_collect_without_the_extra_names_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "metaworld", None)  # as if the 'policy' extra were missing
    args = ["--env", "metaworld/reach", "--episodes", "1", "--out", str(tmp_path / "d.npz")]
    assert main(["policy", "collect", *args]) == 2
    assert "pip install -c constraints.txt 'difflab[policy]'" in one_line_error(capsys)
