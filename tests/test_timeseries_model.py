"""Time-series models: CSDI's network (shapes with patches, what its output depends on), the
TimeSeriesModel folder round trip, sampling that keeps the given entries exactly, and
TimeSeriesTask training (loss on the hidden observed entries only, bit-identical resume)."""

import math
from pathlib import Path

import pytest
import torch
from test_cli_ts import write_csv
from test_policy import tiny_policy
from test_training_tasks import assert_same_state, sigint_after
from torch import nn

import difflab.pretrained
from difflab import models
from difflab.core.parameterization import Parameterization
from difflab.data.timeseries import TimeSeries, fit_standardizer
from difflab.timeseries import DLinear, TimeSeriesModel, TimeSeriesTask
from difflab.training.config import load_config
from difflab.training.loop import DataOrder, Trainer
from difflab.training.objectives import denoising_loss

CSDI = {"type": "csdi", "channels": 8, "layers": 2, "heads": 2}


def csdi(dim=3, patch=4, output_std=0.5, seed=0):
    """A float64 CSDI whose zero-initialized output layer is drawn at random (so the output depends
    on its input); output_std 0 keeps it zero."""
    torch.manual_seed(seed)
    net = models.build({**CSDI, "dim": dim, "patch": patch}).double()
    if output_std:
        nn.init.normal_(net.output.weight, std=output_std)
    return net


# ---------------------------------------------------------------- the network


@pytest.mark.parametrize(("length", "patch"), [(11, 4), (7, 1), (3, 8)])
def test_csdi_output_has_the_window_shape_whatever_the_patch(length, patch):
    net = csdi(patch=patch)
    x = torch.randn(2, length, 3, dtype=torch.float64)
    mask = torch.rand(2, length, 3) < 0.5
    out = net(x, torch.tensor([0.1, 2.0]), mask=mask, given=torch.randn_like(x))
    assert out.shape == (2, length, 3) and out.dtype == torch.float64
    assert bool(out.isfinite().all()) and out.std() > 0
    assert net(x, torch.tensor(0.5)).shape == (2, length, 3)  # no mask: the unconditional input


def test_csdi_output_depends_on_the_given_values_and_nothing_else():
    """An entry's output changes with a given value at another step and another feature (attention
    along time and features), not with given values where the mask is 0; no mask is an empty mask;
    each sample is computed alone."""
    net = csdi(patch=1)
    x = torch.randn(3, 9, 3, dtype=torch.float64)
    sigma = torch.tensor([0.3, 1.0, 5.0])
    mask = torch.zeros(3, 9, 3, dtype=torch.bool)
    mask[:, :4] = True
    given = torch.randn_like(x)
    out = net(x, sigma, mask=mask, given=given)
    moved = given.clone()
    moved[:, 1, 0] += 1.0  # a given entry, 7 steps before and 2 features away from (8, 2)
    assert (net(x, sigma, mask=mask, given=moved)[:, 8, 2] - out[:, 8, 2]).abs().min() > 1e-6
    ignored = given.clone()
    ignored[:, 4:] = torch.randn(3, 5, 3, dtype=torch.float64)  # where the mask is 0
    assert torch.equal(net(x, sigma, mask=mask, given=ignored), out)
    empty = torch.zeros_like(mask)
    assert torch.equal(net(x, sigma, mask=empty, given=given), net(x, sigma))
    alone = net(x[1:2], sigma[1:2], mask=mask[1:2], given=given[1:2])
    torch.testing.assert_close(alone, out[1:2], rtol=1e-12, atol=1e-12)


def test_csdi_refuses_bad_input_and_summarizes():
    net = csdi()
    with pytest.raises(ValueError, match=r"windows \[B, L, 3\]"):
        net(torch.randn(2, 5, 4, dtype=torch.float64), torch.tensor(1.0))
    with pytest.raises(ValueError, match="not a context"):
        net(torch.randn(2, 5, 3, dtype=torch.float64), torch.tensor(1.0), context=torch.randn(2, 4))
    with pytest.raises(ValueError, match="not divisible by 3 heads"):
        models.build({"type": "csdi", "channels": 8, "heads": 3})
    with pytest.raises(ValueError, match="patch must be >= 1"):
        models.build({"type": "csdi", "patch": 0})
    text = models.summary(net.float(), (13, 3))
    params = sum(p.numel() for p in net.parameters())
    assert text.startswith(f"csdi: {params:,} parameters") and "per sample of shape (13, 3)" in text


# ---------------------------------------------------------------- the model folder


def tiny_model(output_std=0.5, context=6, horizon=3, prior=None):
    """A TimeSeriesModel of 2 columns (means 5 and -2, stds 3 and 0.5) around a tiny CSDI."""
    g = torch.Generator().manual_seed(0)
    values = torch.randn(500, 2, generator=g, dtype=torch.float64) * torch.tensor([3.0, 0.5])
    values = values + torch.tensor([5.0, -2.0])
    series = TimeSeries(values, torch.ones(500, 2, dtype=torch.bool), ("a", "b"), ("",) * 500)
    net = csdi(dim=2, patch=2, output_std=output_std).float()
    window = {"context": context, "horizon": horizon}
    edm = Parameterization("edm", "edm", sigma_data=1.0)
    training = {"steps": 7, "command": "test"}
    return TimeSeriesModel(
        net, edm, fit_standardizer(series), series.columns, window, prior=prior, training=training
    )


def test_model_folder_round_trip(tmp_path):
    """Weights bit for bit, the config (its training record too, after eval() and a second save),
    and the same samples from the same generator."""
    model = tiny_model()
    assert model.save(tmp_path / "run" / "model") == tmp_path / "run" / "model"
    loaded = TimeSeriesModel.load(tmp_path / "run")  # a run folder finds its model/
    assert loaded.config == model.config and loaded.config["training"]["steps"] == 7
    assert not loaded.training  # nn.Module's mode: eval
    state, again = model.state_dict(), loaded.state_dict()
    assert state.keys() == again.keys() and all(torch.equal(state[k], again[k]) for k in state)
    resaved = TimeSeriesModel.load(loaded.save(tmp_path / "again"))
    assert resaved.config == model.config
    values, given = window_problem()
    a, b = (
        m.sample(values, given, 2, steps=2, generator=torch.Generator().manual_seed(0))
        for m in (model, loaded)
    )
    assert torch.equal(a, b)


def test_loading_another_model_type_is_one_line(tmp_path):
    shipped = Path(difflab.pretrained.__file__).parent / "mnist"
    policy = tiny_policy().save(tmp_path / "policy")
    for folder, kind in [(shipped, "diffusion"), (policy, "policy")]:
        with pytest.raises(ValueError, match=f"holds a {kind} model, not a timeseries model") as e:
            TimeSeriesModel.load(folder)
        assert "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError):
        TimeSeriesModel.load(tmp_path / "nothing")


# ---------------------------------------------------------------- sampling


def window_problem(n=2, length=9):
    g = torch.Generator().manual_seed(1)
    values = torch.randn(n, length, 2, generator=g, dtype=torch.float64) * 3 + 1
    given = torch.rand(n, length, 2, generator=g) < 0.5
    return values, given


def test_sample_keeps_the_given_entries_exactly():
    model = tiny_model()
    values, given = window_problem()
    values[~given] = math.nan  # hidden entries may hold anything
    paths = model.sample(values, given, 5, steps=3, generator=torch.Generator().manual_seed(0))
    assert paths.shape == (5, 2, 9, 2) and paths.dtype == torch.float64
    assert torch.equal(paths[:, given], values[given].expand(5, -1))  # ==, float64
    assert bool(paths.isfinite().all())
    again = model.sample(values, given, 5, steps=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(paths, again)
    other = model.sample(values, given, 5, steps=3, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(paths, other) and torch.equal(other[:, given], paths[:, given])
    chunked = model.sample(values, given, 5, steps=3, batch_size=3)
    assert chunked.shape == paths.shape and torch.equal(chunked[:, given], paths[:, given])


def test_untrained_samples_are_the_standardized_prior_unstandardized():
    """A zero output layer makes the EDM denoiser c_skip x = x / (1 + sigma^2), the exact denoiser
    of N(0, I) (sigma_data 1): the hidden entries come out N(mean_k, std_k^2) in the columns' units
    (means 5, -2; stds 3, 0.5). 2000 samples x 2 entries per column at 40 heun steps: standard
    errors 0.016 std_k (mean) and 0.011 std_k (std), heun's bias +0.008 std_k (+0.175 at the
    default 10 steps, which would fail)."""
    model = tiny_model(output_std=0.0)
    values = torch.zeros(1, 9, 2, dtype=torch.float64)
    given = torch.zeros(1, 9, 2, dtype=torch.bool)
    given[:, :7] = True
    g = torch.Generator().manual_seed(0)
    hidden = model.sample(values, given, 2000, steps=40, generator=g)[:, 0, 7:].reshape(-1, 2)
    mean, std = (v.double() for v in model.standardizer.center_scale())
    z = torch.stack([(hidden.mean(0) - mean) / std, hidden.std(0) / std - 1])
    print(f"standardized mean error and std ratio - 1:\n{z}")
    assert bool((z.abs() < 0.05).all())


def test_a_prior_forecaster_is_the_mean_the_residual_model_adds_back(tmp_path):
    """With a DLinear prior and a zero network the residual denoiser is the exact one of N(0, I)
    around mu: forecasts are N(mu, 1) in standardized units, mu = [context; DLinear(context)]
    (CARD, Han et al. 2022); the prior's weights and config survive the model folder."""
    prior = DLinear(6, 3)
    with torch.no_grad():
        prior.seasonal.weight.normal_(0.0, 0.3)
    model = tiny_model(output_std=0.0, prior=prior)
    loaded = TimeSeriesModel.load(model.save(tmp_path / "model"))
    assert loaded.config["prior"] == {"type": "dlinear", "kernel": 25}
    history = torch.randn(1, 6, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    history = model.standardizer.unnormalize(history.float()).double()
    paths = loaded.forecast(history, 3000, steps=40, generator=torch.Generator().manual_seed(0))
    z = model.standardizer(paths.float()).double()[:, 0]  # [S, H, K] standardized
    mu = prior(model.standardizer(history.float())).double()[0]
    print(
        f"mean error {(z.mean(0) - mu).abs().max():.3f}, std {z.std(0).min():.3f}-{z.std(0).max():.3f}"
    )
    assert (z.mean(0) - mu).abs().max() < 0.08  # 3000 samples: standard error 0.018
    assert ((z.std(0) - 1).abs() < 0.05).all()
    with pytest.raises(ValueError, match="context"):
        tiny_model(context=0, prior=DLinear(1, 3))


def test_forecast_and_its_errors():
    model = tiny_model()
    history = torch.randn(4, 6, 2, dtype=torch.float64)
    paths = model.forecast(history, 3, steps=2, generator=torch.Generator().manual_seed(0))
    assert paths.shape == (3, 4, 3, 2) and bool(paths.isfinite().all())
    with pytest.raises(ValueError, match="the model's 6 context steps, got 5"):
        model.forecast(history[:, :5], 3)
    with pytest.raises(ValueError, match=r"\[N, steps, 2\] \(a, b\)"):
        model.forecast(torch.randn(4, 6, 3), 3)
    values, given = window_problem()
    bad = values.clone()
    bad[given.nonzero()[0].unbind()] = math.nan
    with pytest.raises(ValueError, match="given values contain NaN"):
        model.sample(bad, given)
    with pytest.raises(ValueError, match="given must have the values' shape"):
        model.sample(values, given[:, :5])
    with pytest.raises(ValueError, match="samples must be >= 1"):
        model.sample(values, given, 0)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        model.sample(values, given, steps=0)


# ---------------------------------------------------------------- training


def denoising_loss_where():
    """denoising_loss with an elementwise denoiser: the mean over the marked entries only."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(3, 4, 2, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    where = torch.rand(3, 4, 2, generator=g) < 0.5
    where[2] = False
    return x0, eps, sigma, where


def test_denoising_loss_scores_the_marked_entries_only():
    """With D(x, sigma) = x / 2 (x0-prediction on VE) and uniform weights: the mean of (x0 + sigma eps) / 2 - x0)^2 over
    the marked entries (0 for a sample with none); a change of x0 elsewhere changes nothing."""
    x0, eps, sigma, where = denoising_loss_where()

    half = Parameterization("ve", "x0").denoiser(lambda x, t: x / 2)
    loss = denoising_loss(half, x0, eps, sigma, "uniform", where=where)
    error = ((x0 + sigma[:, None, None] * eps) / 2 - x0).square()
    expected = torch.stack(
        [error[i][where[i]].mean() for i in range(2)] + [torch.tensor(0.0).double()]
    )
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    elsewhere, marked = x0.clone(), x0.clone()
    elsewhere[~where] += 10.0
    marked[0][where[0].nonzero()[0].unbind()] += 1.0
    assert torch.equal(denoising_loss(half, elsewhere, eps, sigma, "uniform", where=where), loss)
    changed = denoising_loss(half, marked, eps, sigma, "uniform", where=where)
    assert changed[0] != loss[0] and torch.equal(changed[1:], loss[1:])


def ts_config(tmp_path, steps=6):
    csv = tmp_path / "series.csv"
    if not csv.exists():
        write_csv(csv, rows=300, columns=("a", "b"))
        lines = csv.read_text().splitlines()
        lines[5] = lines[5].rsplit(",", 1)[0] + ","  # a missing cell
        csv.write_text("\n".join(lines) + "\n")
    config = {
        "run": {"steps": steps, "log_every": 1, "checkpoint_every": 4, "threads": 1},
        "data": {"path": str(csv), "split": "fractions", "task": "both"},
        "model": {"context": 8, "horizon": 4, "channels": 8, "layers": 1, "heads": 2, "patch": 2},
        "optim": {"batch_size": 8, "warmup": 2},
    }
    return load_config(config, (), TimeSeriesTask.defaults, TimeSeriesTask.free)


def test_task_loss_is_on_the_hidden_observed_entries(tmp_path):
    """A batch's target is observed & ~given; its given entries carry no noise; the per-sample
    losses do not move when the network's output moves off the target entries."""
    trainer = Trainer(ts_config(tmp_path), tmp_path / "run", progress=False, task=TimeSeriesTask())
    task = trainer.task
    n = len(task.values)  # one epoch: every window once, in the order's first permutation
    observed = task.observed[DataOrder(n, 0).next(n)]
    assert not bool(observed.all())  # the missing cell
    batch = task.batch(n, torch.Generator().manual_seed(0))
    cond, target = batch["cond"], batch["target"]
    assert bool(cond.any()) and torch.equal(target, observed & ~cond)
    assert not bool((batch["eps"][cond] != 0).any()) and bool((batch["eps"][~cond] != 0).all())
    rows = torch.arange(n)
    net = trainer.net
    loss = task.losses(net, batch, rows)

    class Poked(nn.Module):
        def __init__(self, where):
            super().__init__()
            self.where = where

        def forward(self, x, time, **cond):
            return net(x, time, **cond) + torch.where(self.where, 100.0, 0.0)

    assert torch.equal(task.losses(Poked(~target), batch, rows), loss)
    poked = task.losses(Poked(target), batch, rows)
    has_target = target.flatten(1).any(1)
    assert bool((poked[has_target] > loss[has_target] + 1).all())


def test_training_resumes_bit_identically_after_sigint(tmp_path):
    config = ts_config(tmp_path)
    straight = Trainer(config, tmp_path / "a", progress=False, task=TimeSeriesTask())
    assert straight.fit()
    first = sigint_after(Trainer(config, tmp_path / "b", progress=False, task=TimeSeriesTask()), 5)
    assert not first.fit() and first.step == 5 and not (tmp_path / "b" / "model").exists()
    torch.manual_seed(1234)
    second = Trainer(config, tmp_path / "b", progress=False, task=TimeSeriesTask())
    assert second.resume() and second.step == 5 and second.fit()
    assert_same_state(straight, second)
    a, b = TimeSeriesModel.load(tmp_path / "a"), TimeSeriesModel.load(tmp_path / "b")
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(p, q)
    assert a.columns == ("a", "b") and b.config["training"]["steps"] == 6
