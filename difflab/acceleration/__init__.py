"""Layer 4: making a denoiser cheaper, each option measured in ``benchmarks/acceleration.py``
(docs/acceleration.md).

Feature caching, as modules with the network's own signature that go inside any difflab denoiser
(so every sampler and guidance method sees a plain denoiser):

    net = DeepCache(model.network, uniform_refresh(nfe, 3), branch=0, forecast=0)   # UNet
    net = BlockCache(dit, uniform_refresh(nfe, nfe), threshold=0.1, forecast=1)      # DiT
    denoiser = with_network(model.denoiser, net)

Post-training int8 quantization calibrated along sampling trajectories (:func:`quantize`,
:func:`along_trajectories`), and distillation into 1-4 step students (progressive, consistency
distillation and training, reflow: :func:`difflab.acceleration.distill.distill`,
:class:`DistillTrainer`, ``difflab distill``).
"""

from difflab.acceleration.blockcache import BlockCache, relative_change
from difflab.acceleration.cache import StepCache, power_refresh, uniform_refresh
from difflab.acceleration.consistency import (
    consistency_levels,
    consistency_loss,
    curriculum,
    draw_levels,
    pseudo_huber,
)
from difflab.acceleration.deepcache import DeepCache
from difflab.acceleration.denoisers import with_network
from difflab.acceleration.distill import (
    DEFAULTS,
    METHODS,
    Distillation,
    DistillTrainer,
    full_config,
)
from difflab.acceleration.features import FeatureCache
from difflab.acceleration.grids import few_step_grid
from difflab.acceleration.progressive import halve, progressive_target
from difflab.acceleration.quantize import along_trajectories, quantize
from difflab.acceleration.reflow import GridLevels, reflow_loss, reflow_pairs
from difflab.acceleration.teacher import ode_step

__all__ = [
    "DEFAULTS",
    "METHODS",
    "BlockCache",
    "DeepCache",
    "DistillTrainer",
    "Distillation",
    "FeatureCache",
    "GridLevels",
    "StepCache",
    "along_trajectories",
    "consistency_levels",
    "consistency_loss",
    "curriculum",
    "draw_levels",
    "few_step_grid",
    "full_config",
    "halve",
    "ode_step",
    "power_refresh",
    "progressive_target",
    "pseudo_huber",
    "quantize",
    "reflow_loss",
    "reflow_pairs",
    "relative_change",
    "uniform_refresh",
    "with_network",
]
