"""Layer 2: guidance as denoiser transformations, so every sampler works with every guidance.

    guided = classifier_free(model.denoiser, CFG(3.0, rescale=0.7), sigma_interval=(0.3, 5.0))
    x0 = sampling.get("dpmpp_2m")(guided, x, sigmas, cond={"labels": labels})

CFG-like methods are a pair of branches (:func:`classifier_free`, :func:`autoguidance`,
:func:`perturbed`; perturbed attention on difflab's networks is
:func:`difflab.models.perturbed_attention`) combined by a rule (:class:`CFG` with rescale,
:class:`APG`, :class:`CFGZeroStar`; by name ``get("apg")``, the names from :func:`available`);
:func:`composable` joins conditions with AND / NOT; :func:`cfg_pp` renoises with the unconditional
eps (:func:`renoise`); :func:`classifier_guidance` (with the shipped noise-conditional MNIST
classifier, ``difflab.pretrained.load_classifier("mnist_noisy_classifier")``) and
:func:`reward_guidance` add a gradient. :class:`W2SD` (weak-to-strong diffusion) is not a denoiser
but a sampler: it reflects the state with a strong and a weak model (:func:`reflect`) between the
steps of any registered sampler. Every function here takes any denoiser callable. Formulas,
citations and the exact-mixture evidence: docs/guidance.md.
"""

from difflab.guidance.cfg import classifier_free, composable
from difflab.guidance.degraded import autoguidance, perturbed
from difflab.guidance.gradient import classifier_guidance, reward_guidance
from difflab.guidance.guided import Branches, guide, label_branches
from difflab.guidance.reflection import W2SD, reflect
from difflab.guidance.renoise import cfg_pp, renoise
from difflab.guidance.rules import APG, CFG, SPACES, CFGZeroStar, Rule, as_rule, available, get

__all__ = [
    "APG",
    "CFG",
    "SPACES",
    "W2SD",
    "Branches",
    "CFGZeroStar",
    "Rule",
    "as_rule",
    "autoguidance",
    "available",
    "cfg_pp",
    "classifier_free",
    "classifier_guidance",
    "composable",
    "get",
    "guide",
    "label_branches",
    "perturbed",
    "reflect",
    "renoise",
    "reward_guidance",
]
