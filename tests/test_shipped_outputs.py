"""Every shipped model gives the same outputs as when tests/data/shipped_outputs.safetensors was
written (before the one-model-life refactor): samples for a fixed seed, text samples, classifier
logits. Bit-identical on the CPU kind that wrote them; within 1e-5 elsewhere (other SIMD kernels
round differently). Rewrite the file only on purpose: ``python tests/test_shipped_outputs.py``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

REFERENCE = Path(__file__).resolve().parent / "data" / "shipped_outputs.safetensors"
IMAGE_MODELS = ("mnist", "mnist_2step", "mnist_small", "moons", "8gaussians")


def _image_input() -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.rand((4, 1, 28, 28), generator=g) * 2 - 1


def outputs() -> dict[str, torch.Tensor]:
    """What each shipped model computes from fixed seeds (one thread, float32)."""
    import difflab
    from difflab import text
    from difflab.metrics import classifier
    from difflab.pretrained import load_classifier

    out = {}
    for name in IMAGE_MODELS:
        m = difflab.load(name)
        labels = [0, 3, 7] if m.num_classes else None
        guidance = {"guidance": 2.0} if m.has_null_class else {}
        steps = 4 if isinstance(m.defaults["schedule"], str) else None  # students keep a grid
        out[f"{name}/sample"] = m.sample(3, labels, steps=steps, seed=11, **guidance)
        x = torch.randn((2, *m.shape), generator=torch.Generator().manual_seed(3))
        cond = {"labels": torch.tensor([1, 2])} if m.num_classes else {}
        out[f"{name}/denoiser"] = m.denoiser(x * 2.5, torch.tensor([2.5, 0.3]), **cond)
    masked = text.load("shakespeare")
    out["shakespeare/sample"] = masked.generate(2, 24, steps=8, seed=5).tokens
    ar = text.load("shakespeare_ar")
    out["shakespeare_ar/nll"] = ar.nll(out["shakespeare/sample"]).float()
    images = _image_input()
    features, logits = classifier.load().eval()(images)
    out["mnist_classifier/features"], out["mnist_classifier/logits"] = features, logits
    out["mnist_noisy_classifier/logits"] = load_classifier("mnist_noisy_classifier")(
        images, torch.tensor(0.7)
    )
    return {k: v.detach().contiguous() for k, v in out.items()}


@pytest.fixture(scope="module")
def computed() -> dict[str, torch.Tensor]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return outputs()
    finally:
        torch.set_num_threads(threads)


def test_shipped_models_compute_what_they_did(computed: dict[str, torch.Tensor]) -> None:
    stored = load_file(REFERENCE)
    same_cpu = bytes(stored.pop("cpu_capability").tolist()).decode() == _cpu()
    assert sorted(computed) == sorted(stored)
    for key, want in stored.items():
        got = computed[key]
        assert got.dtype == want.dtype and got.shape == want.shape, key
        if same_cpu or not got.is_floating_point():
            assert torch.equal(got, want), f"{key} changed"
        else:
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5, msg=key)


def _cpu() -> str:
    return torch.backends.cpu.get_cpu_capability()


if __name__ == "__main__":
    torch.set_num_threads(1)
    with torch.no_grad():
        tensors = outputs()
    tensors["cpu_capability"] = torch.tensor(list(_cpu().encode()), dtype=torch.uint8)
    save_file(tensors, str(REFERENCE))
    print(f"wrote {REFERENCE}: {', '.join(sorted(tensors))}", file=sys.stderr)
