"""Test-suite settings and shared fixtures."""

import sys
import types
from pathlib import Path

import pytest
import torch

# benchmarks/anchors.py: other libraries' samplers, which the benchmarks and the tests compare against
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from anchors import k_diffusion_sampling

# The suite is dominated by small float64 tensors: one thread is faster there than two, and it keeps
# timings sane on a shared 2-core machine.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def k_diffusion() -> types.ModuleType:
    """k-diffusion's sampling module (an anchor); the test is skipped where it is not installed."""
    try:
        return k_diffusion_sampling()
    except ImportError as e:
        pytest.skip(str(e))
