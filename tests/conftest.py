"""Test-suite settings."""

import torch

# The suite is dominated by small float64 tensors: one thread is faster there than two, and it keeps
# timings sane on a shared 2-core machine.
torch.set_num_threads(1)
