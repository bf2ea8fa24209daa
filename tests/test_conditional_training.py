"""A conditional sequence model trained through the one training loop (the denoising task, data with
a context) learns the exact conditional denoiser E[a0 | a, o] of a small Gaussian mixture over
(a, o): a an action chunk [4, 2], o an observation [2]. The pieces fit: Dataset.context from an
.npz, context dropout, the sequence transformer's adaLN context, the export and difflab.load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import difflab
from difflab.testing import GaussianMixture
from difflab.training import train

OBS = [8, 9]  # a = x0[:8] as [4, 2] (row-major), o = x0[8:]
MIXTURE = GaussianMixture(
    torch.ones(3), 1.5 * torch.randn(3, 10, generator=torch.Generator().manual_seed(0)), 0.1
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("conditional")
    x0 = MIXTURE.sample(4096, torch.Generator().manual_seed(1)).float()
    np.savez(
        folder / "chunks.npz", x=x0[:, :8].reshape(-1, 4, 2).numpy(), context=x0[:, 8:].numpy()
    )
    config = {
        "run": {"steps": 300, "log_every": 100, "checkpoint_every": 1000, "threads": 1},
        "data": {"name": str(folder / "chunks.npz")},
        "model": {
            "type": "sequence_transformer",
            "dim": 2,
            "horizon": 4,
            "hidden_size": 64,
            "depth": 2,
            "heads": 4,
            "context_dim": 2,
            "time_embedding": "fourier",
        },
        "objective": {
            "process": "edm",
            "prediction": "edm",
            "weighting": "edm",
            "noise_levels": "lognormal",
            "sigma_data": 1.0,
            "context_dropout": 0.1,
        },
        "optim": {"lr": 2e-3, "batch_size": 128, "schedule": "cosine"},
        "ema": {"sigma_rel": 0.1},
    }
    threads = torch.get_num_threads()
    try:
        return train(config, run_dir=folder / "run", progress=False)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("sigma", [0.05, 0.5, 2.0])
def test_trained_denoiser_approaches_the_exact_conditional(trained, sigma) -> None:
    """E||D_net - D*||^2 below half the Bayes error E||a0 - D*||^2 at each noise level, and at a
    high one far below the error of ignoring o (the exact unconditional denoiser of a)."""
    den = trained.task.denoiser()
    exact = MIXTURE.context_denoiser(OBS)
    actions = GaussianMixture(MIXTURE.weights, MIXTURE.means[:, :8], MIXTURE.variances[:, :8])
    test = MIXTURE.sample(2048, torch.Generator().manual_seed(9))
    a, o = test[:, :8], test[:, 8:]
    x = a + sigma * torch.randn(
        a.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )
    with torch.no_grad():
        net = den(x.float().reshape(-1, 4, 2), torch.full((2048,), sigma), context=o.float())
    best = exact(x, sigma, context=o)
    excess = (net.reshape(-1, 8).double() - best).square().sum(1).mean()
    bayes = (a - best).square().sum(1).mean()
    assert excess < 0.5 * bayes, (float(excess), float(bayes))
    if sigma == 2.0:
        blind = (actions.denoise(x, sigma) - best).square().sum(1).mean()
        assert excess < 0.3 * blind, (float(excess), float(blind))


def test_the_exported_model_takes_the_context(trained) -> None:
    model = difflab.load(trained.run_dir / "model")
    assert model.shape == (4, 2) and model.config["network"]["context_dim"] == 2
    assert model.config["objective"]["context_dropout"] == 0.1
    x, o = torch.randn(3, 4, 2), torch.randn(3, 2)
    out = model.denoiser(x, torch.ones(3), context=o)
    torch.testing.assert_close(out, trained.task.denoiser()(x, torch.ones(3), context=o))
    assert not torch.allclose(out, model.denoiser(x, torch.ones(3)), atol=1e-4)  # null context


def test_a_context_network_needs_data_with_a_context(tmp_path) -> None:
    np.savez(tmp_path / "plain.npz", x=np.zeros((8, 4, 2), np.float32))
    config = {
        "run": {"steps": 1, "threads": 1},
        "data": {"name": str(tmp_path / "plain.npz")},
        "model": {"type": "sequence_transformer", "dim": 2, "horizon": 4, "context_dim": 2},
        "objective": {"process": "edm", "prediction": "edm"},
        "optim": {"batch_size": 4},
    }
    with pytest.raises(ValueError, match=r"takes a context \(context_dim=2\) but data set"):
        train(config, run_dir=tmp_path / "run", progress=False)
    np.savez(tmp_path / "other.npz", x=np.zeros((8, 4, 2), np.float32), context=np.zeros((8, 3)))
    config["data"]["name"] = str(tmp_path / "other.npz")
    with pytest.raises(ValueError, match=r"contexts of shape \[2\] .* contexts of shape \[3\]"):
        train(config, run_dir=tmp_path / "run2", progress=False)
