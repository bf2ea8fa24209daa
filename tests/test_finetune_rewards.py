"""The rewards of difflab.finetune by name: classifier:K against real MNIST digits and the metrics'
classifier, ink against hand values, linear and quadratic against difflab.testing's rewards (one
object with the exact optimum), any callable, and one-line errors for bad names and bad values."""

from __future__ import annotations

import pytest
import torch

from difflab import data, finetune
from difflab.finetune import Reward, checked, get
from difflab.metrics.classifier import mnist_features
from difflab.testing import GaussianMixture, LinearReward, QuadraticReward, tilted


@pytest.fixture(scope="module")
def mnist_test():
    try:
        test = data.load("mnist", "test")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    return test.x[:500], test.labels[:500]


def test_every_name_parses():
    assert finetune.available() == ["classifier", "ink", "linear", "quadratic"]
    specs = [
        ("classifier:3", {}),
        ("classifier", {}),
        ("ink", {}),
        ("linear:1,0", {}),
        ("linear:2", {"dim": 3}),
        ("quadratic", {"dim": 2}),
        ("quadratic:a=0,1;q=2", {}),
        ("quadratic:q=1,2", {"dim": 2}),
    ]
    for spec, context in specs:
        reward = get(spec, **context)
        assert isinstance(reward, Reward) and reward.name == spec


def test_classifier_reward_is_highest_for_its_digit(mnist_test):
    x, labels = mnist_test
    scores = torch.stack([get(f"classifier:{k}")(x) for k in range(10)], 1)  # [B, 10]
    assert (scores <= 0).all()
    assert (scores.argmax(1) == labels).double().mean() >= 0.98
    for k in range(10):  # digit k's images score highest on classifier:k, on average
        means = torch.stack([scores[labels == j, k].mean() for j in range(10)])
        assert int(means.argmax()) == k
    _, logits = mnist_features(x)  # the metrics' classifier, the same network
    assert torch.allclose(scores, logits.log_softmax(1), atol=1e-5)
    own = get("classifier")(x, labels)
    assert torch.allclose(own, scores.gather(1, labels[:, None])[:, 0])


def test_classifier_reward_is_differentiable(mnist_test):
    x = mnist_test[0][:8].clone().requires_grad_(True)
    reward = get("classifier:3")
    r = reward(x)
    (grad,) = torch.autograd.grad(r.sum(), x)
    assert grad.shape == x.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0
    with torch.no_grad():  # a small step up the gradient raises every sample's reward
        stepped = reward(x + 1e-3 * grad / grad.flatten(1).norm(dim=1)[:, None, None, None])
    assert (stepped > r.detach()).all()


def test_ink():
    ink = get("ink")
    x = torch.full((4, 1, 28, 28), -1.0)
    x[1] = 1.0
    x[2, :, :14] = 1.0  # the top half white
    x[3] = 3.0  # beyond the data range: clipped
    assert torch.equal(ink(x), torch.tensor([0.0, 1.0, 0.5, 1.0]))
    v = torch.zeros(2, 5, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(ink(v).sum(), v)
    assert torch.allclose(grad, torch.full((2, 5), 0.1, dtype=torch.float64))  # 1 / (2 D)


def test_linear_is_the_exact_reward():
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    reward = get("linear:1.5,-2")
    assert isinstance(reward.exact, LinearReward)
    assert torch.equal(reward.exact.w, torch.tensor([1.5, -2.0], dtype=torch.float64))
    assert torch.allclose(reward(x), 1.5 * x[:, 0] - 2 * x[:, 1], rtol=0, atol=1e-15)
    assert torch.equal(get("linear:2", dim=3).exact.w, torch.full((3,), 2.0, dtype=torch.float64))
    p = GaussianMixture(torch.tensor([1.0]), torch.zeros(1, 2), torch.ones(1, 2))
    assert torch.allclose(
        tilted(p, reward.exact, 2.0).means, torch.tensor([[0.75, -1.0]], dtype=torch.float64)
    )
    given = LinearReward(torch.tensor([1.0, 0.0]))
    assert get(given).exact is given  # a testing reward passed in stays the same object


def test_quadratic_is_the_exact_reward():
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    default = get("quadratic", dim=2)
    assert torch.allclose(default(x), -0.5 * x.square().sum(1), rtol=0, atol=1e-15)
    reward = get("quadratic:a=0,1;q=2")
    expected = QuadraticReward(2 * torch.eye(2), torch.tensor([0.0, 1.0]))
    assert isinstance(reward.exact, QuadraticReward)
    assert torch.equal(reward.exact.Q, expected.Q) and torch.equal(reward.exact.a, expected.a)
    assert torch.allclose(reward(x), -(x[:, 0] ** 2 + (x[:, 1] - 1) ** 2), rtol=0, atol=1e-14)
    diagonal = get("quadratic:q=1,3;a=1")
    assert torch.equal(diagonal.exact.Q, torch.diag(torch.tensor([1.0, 3.0], dtype=torch.float64)))
    assert torch.equal(diagonal.exact.a, torch.ones(2, dtype=torch.float64))


def test_callables():
    def height(x):
        return x[:, 1]

    def labelled(x, labels=None):
        return x[:, 0] * labels

    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert torch.equal(get(height)(x), torch.tensor([2.0, 4.0]))
    assert get(height).name == "height" and get(height).exact is None
    assert torch.equal(get(labelled)(x, torch.tensor([2, 3])), torch.tensor([2.0, 9.0]))
    reward = get("ink")
    assert get(reward) is reward and checked(reward) is reward


BAD_SPECS = [
    ("inq", r"unknown reward 'inq'\. Did you mean 'ink'"),
    ("clasifier:3", r"Did you mean 'classifier'"),
    ("ink:3", "takes no argument"),
    ("classifier:10", r"class must be an integer 0\.\.9"),
    ("classifier:x", "class must be an integer"),
    ("linear", "needs its weights"),
    ("linear:1,b", "not a comma-separated list of numbers"),
    ("linear:1", "give dim=D"),
    ("quadratic", "give dim=D"),
    ("quadratic:b=1", "options are a=VECTOR"),
    ("quadratic:a=1,2;q=1,2,3", "different lengths"),
]


@pytest.mark.parametrize("spec, message", BAD_SPECS)
def test_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message) as e:
        get(spec)
    assert "\n" not in str(e.value)


def test_bad_values_are_named_when_called():
    def broken(x):
        return x.sum(1) * float("nan")

    def flat(x):
        return x.sum()

    x = torch.ones(3, 2)
    for reward, message in [
        (broken, "reward 'broken' contains NaN or inf"),
        (lambda x: x.sum(1) / 0, "reward '<lambda>' contains NaN or inf"),
        (flat, r"reward 'flat' returned torch\.float32 of shape \[\], not one float per sample"),
        (lambda x: x.long().sum(1), r"torch\.int64 of shape \[3\]"),
        (lambda x: [1.0] * 3, "returned a list"),
    ]:
        with pytest.raises(ValueError, match=message) as e:
            get(reward)(x)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"linear:1,2,3' has 3 entries but dim is 2"):
        get("linear:1,2,3", dim=2)
    with pytest.raises(ValueError, match="give labels, or name a class"):
        get("classifier")(torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match=r"one label 0\.\.9 per sample"):
        get("classifier")(torch.zeros(2, 1, 28, 28), torch.tensor([3, -1]))
    with pytest.raises(ValueError, match="a name or a callable"):
        get(3)
