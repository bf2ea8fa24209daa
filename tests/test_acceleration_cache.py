"""Feature caching (DeepCache, first-block cache, forecasting) on tiny difflab UNets and DiTs: exact
when nothing is reused, the planned number of full evaluations, reset per run, batch safety."""

import math

import pytest
import torch

from difflab import models, sampling, schedules
from difflab.acceleration import (
    BlockCache,
    DeepCache,
    FeatureCache,
    power_refresh,
    uniform_refresh,
    with_network,
)
from difflab.core.parameterization import EDMPrecond
from difflab.guidance import classifier_free
from difflab.pretrained.generate import sample_batched

SAMPLERS = ["euler", "heun", "dpmpp_2m", "ddim_eta", "edm"]
STEPS = 6


def _randomized(net: torch.nn.Module, std: float) -> torch.nn.Module:
    """Random weights everywhere (the zero-initialized output layers too), so outputs are not 0."""
    torch.manual_seed(0)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=std)
    return net.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    return _randomized(
        models.build(
            {
                "type": "unet",
                "image_size": 8,
                "channels": 8,
                "channel_mult": [1, 2],
                "num_res_blocks": 1,
                "attention_resolutions": [4],
                "head_channels": 8,
                "num_classes": 3,
                "time_embedding": "fourier",
            }
        ),
        0.2,
    )


@pytest.fixture(scope="module")
def dit() -> torch.nn.Module:
    config = {"type": "dit", "image_size": 8, "patch_size": 2, "hidden_size": 32, "depth": 4}
    config |= {"heads": 2, "num_classes": 3, "time_embedding": "fourier"}
    return _randomized(models.build(config), 0.1)


def _run(den, name, x, labels, seed=0):
    sigmas = schedules.get("karras")(STEPS, 0.002, 80.0)
    gens = sampling.generators(seed, x.shape[0])
    with torch.no_grad():
        return sampling.get(name)(den, x, sigmas, generator=gens, cond={"labels": labels})


def _start(batch=4):
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, 1, 8, 8, generator=g) * 80, torch.tensor([0, 1, 2, -1][:batch])


@pytest.mark.parametrize("name", SAMPLERS)
def test_deepcache_interval_1_is_the_uncached_network(unet, name):
    x, labels = _start()
    nfe = sampling.info(name).nfe(STEPS)
    den = EDMPrecond(unet)
    cache = DeepCache(unet, uniform_refresh(nfe, 1), branch=1)
    assert torch.equal(_run(with_network(den, cache), name, x, labels), _run(den, name, x, labels))
    assert cache.evaluations == cache.calls == nfe


@pytest.mark.parametrize("name", SAMPLERS)
def test_blockcache_threshold_0_is_the_uncached_network(dit, name):
    x, labels = _start()
    nfe = sampling.info(name).nfe(STEPS)
    den = EDMPrecond(dit)
    cache = BlockCache(dit, uniform_refresh(nfe, nfe), threshold=0.0, forecast=1)
    assert torch.equal(_run(with_network(den, cache), name, x, labels), _run(den, name, x, labels))
    assert cache.evaluations == nfe


def test_guided_sampling_with_a_cache_is_exact_at_interval_1(unet):
    x, labels = _start()
    den = EDMPrecond(unet)
    cache = DeepCache(unet, uniform_refresh(STEPS, 1))
    guided = classifier_free(with_network(den, cache), 2.0)
    assert torch.equal(
        _run(guided, "euler", x, labels), _run(classifier_free(den, 2.0), "euler", x, labels)
    )


@pytest.mark.parametrize("branch", [0, 1, 2])
def test_a_cached_call_at_the_last_full_input_is_the_full_output(unet, branch):
    """The shallow path with the deep feature of the same input is the network itself: this holds
    only if the skips and the stored feature are wired to the right blocks."""
    x, labels = _start()
    time = torch.full((4,), 0.3)
    cache = DeepCache(unet, (True, False), branch=branch)
    with torch.no_grad():
        full, cached = cache(x / 80, time, labels), cache(x / 80, time, labels)
        plain = unet(x / 80, time, labels)
    assert torch.equal(full, plain) and torch.equal(cached, plain)
    assert cache.evaluations == 1 and cache.calls == 2


@pytest.mark.parametrize("interval", [2, 3, 5])
@pytest.mark.parametrize("name", ["euler", "heun"])
def test_full_evaluations_drop_as_planned(unet, dit, name, interval):
    x, labels = _start()
    nfe = sampling.info(name).nfe(STEPS)
    deep = DeepCache(unet, uniform_refresh(nfe, interval), forecast=1)
    block = BlockCache(dit, uniform_refresh(nfe, interval), threshold=math.inf)
    for net, cache in ((unet, deep), (dit, block)):
        out = _run(with_network(EDMPrecond(net), cache), name, x, labels)
        assert cache.calls == nfe and cache.evaluations == math.ceil(nfe / interval)
        assert torch.isfinite(out).all()
        assert not torch.equal(out, _run(EDMPrecond(net), name, x, labels))


def test_cache_resets_after_each_run_and_batches_are_runs(unet):
    """Each run of len(refresh) calls starts from an empty cache: two runs with one cache agree,
    and batched sampling equals running each batch with a fresh cache."""
    x, labels = _start()
    cache = DeepCache(unet, uniform_refresh(STEPS, 3), forecast=2)
    den = with_network(EDMPrecond(unet), cache)
    first, second = _run(den, "euler", x, labels), _run(den, "euler", x, labels)
    assert torch.equal(first, second)
    sigmas = schedules.get("karras")(STEPS, 0.002, 80.0)
    batched, nfe, _ = sample_batched(den, (4, 1, 8, 8), sigmas, "euler", labels, batch_size=2)
    assert nfe == STEPS and cache.calls == 2 * STEPS + 2 * STEPS
    for rows in (slice(0, 2), slice(2, 4)):
        fresh = with_network(
            EDMPrecond(unet), DeepCache(unet, uniform_refresh(STEPS, 3), forecast=2)
        )
        gens = sampling.generators(0, 4)[rows]
        start = sampling.randn((2, 1, 8, 8), gens) * 80
        manual = sampling.get("euler")(fresh, start, sigmas, cond={"labels": labels[rows]})
        assert torch.equal(batched[rows], manual)


@pytest.mark.parametrize("threshold", [0.05, 0.3])
def test_threshold_decisions_are_per_sample(dit, threshold):
    """A sample's output and its reuse decisions do not depend on the other samples in its batch."""
    x, labels = _start()
    nfe = sampling.info("heun").nfe(STEPS)
    batch = BlockCache(dit, uniform_refresh(nfe, nfe), threshold=threshold, forecast=1)
    together = _run(with_network(EDMPrecond(dit), batch), "heun", x, labels)
    for i in range(4):
        alone = BlockCache(dit, uniform_refresh(nfe, nfe), threshold=threshold, forecast=1)
        one = _run(with_network(EDMPrecond(dit), alone), "heun", x[i : i + 1], labels[i : i + 1])
        torch.testing.assert_close(together[i : i + 1], one, rtol=1e-5, atol=1e-5)
    assert 1 < batch.evaluations < nfe  # some samples skipped some calls


def test_forecast_is_exact_on_polynomials_per_sample():
    """Newton extrapolation of order m reproduces features of degree <= m at any node spacing,
    each sample from its own nodes; a repeated node replaces the newest one."""
    cache = FeatureCache(order=2)

    def feature(t):
        return torch.stack([1 + 2 * t - 3 * t**2, 0.5 * t**2], 1)

    nodes = torch.tensor([[0.0, 1.0], [0.3, 1.5], [0.3, 1.5], [0.9, 2.7]], dtype=torch.float64)
    for t in nodes:
        cache.update(t, feature(t))
    t = torch.tensor([2.0, -1.0], dtype=torch.float64)
    torch.testing.assert_close(cache.predict(t), feature(t), rtol=1e-12, atol=1e-12)
    # one sample's update leaves the other's forecast alone
    before = cache.predict(t)[1]
    cache.update(
        torch.tensor([3.0], dtype=torch.float64),
        feature(torch.tensor([3.0])),
        rows=torch.tensor([0]),
    )
    assert torch.equal(cache.predict(t)[1], before)
    copy = FeatureCache(order=0)
    copy.update(t, feature(t))
    assert torch.equal(copy.predict(t + 5), feature(t))


def test_refresh_plans():
    assert uniform_refresh(7, 3) == (True, False, False, True, False, False, True)
    s = power_refresh(20, 6)
    assert s[0] and sum(s) <= 6 and len(s) == 20
    middle, ends = sum(s[5:15]), sum(s[:5]) + sum(s[15:])
    assert middle > ends - 1  # denser around the center
    assert power_refresh(10, 10, power=1.0) == (True,) * 10


def test_errors(unet, dit):
    with pytest.raises(ValueError, match="starting with True"):
        DeepCache(unet, (False, True))
    with pytest.raises(ValueError, match="branch"):
        DeepCache(unet, (True,), branch=len(unet.down))
    with pytest.raises(TypeError, match="UNet"):
        DeepCache(dit, (True,))
    with pytest.raises(ValueError, match="threshold"):
        BlockCache(dit, (True,), threshold=-1.0)
    with pytest.raises(ValueError, match="forecast variable"):
        DeepCache(unet, (True,), variable="sigma")
    with pytest.raises(TypeError, match="Denoiser or EDMPrecond"):
        with_network(lambda x, s: x, unet)
    x, labels = _start()
    cache = DeepCache(unet, (True, False, False))
    cache(x, torch.zeros(4), labels)
    with pytest.raises(ValueError, match="reset"):
        cache(x[:2], torch.zeros(2), labels[:2])
    cache.reset()
    cache(x[:2], torch.zeros(2), labels[:2])  # a new run may have another batch
