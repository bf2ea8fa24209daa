"""Layer 4: discrete diffusion for text: masked (absorbing-state) and uniform-state diffusion
language models.

    model = difflab.text.load("shakespeare")                       # shipped masked diffusion model
    out = model.generate(8, length=256, sampler="first_hitting", seed=0)
    print(out.texts[0])

- :mod:`~difflab.text.masking`: masking schedules alpha_t (linear, cosine, log_linear).
- :mod:`~difflab.text.diffusion`: forward masking, the MDLM negative ELBO with SUBS (Monte Carlo and
  exact by enumeration), the autoregressive NLL.
- :mod:`~difflab.text.uniform`: uniform-state diffusion (D3PM-uniform): its forward process,
  continuous-time ELBO (Monte Carlo and exact by enumeration) and reverse step.
- :mod:`~difflab.text.samplers`: ancestral (cached), first-hitting, confidence (MaskGIT; LLaDA's
  low-confidence and random remasking), threshold (Fast-dLLM), ReMDM, semi-autoregressive blocks,
  uniform ancestral: ``sampler(network, z, steps, *, generator, callback, **options)``.
- :mod:`~difflab.text.guidance`: classifier-free guidance by the prompt (a network wrapper).
- :mod:`~difflab.text.sample_files`: samples as .txt (readable) and .jsonl, written atomically.
- :mod:`~difflab.text.categorical`: Gumbel-max categorical sampling in float64.
- :mod:`~difflab.text.transformer`: one transformer, bidirectional or causal.
- :mod:`~difflab.text.data`: character tokenizer, tiny Shakespeare, integer-token files.
- :mod:`~difflab.text.exact`: a joint table over short sequences with exact conditionals (masked
  and uniform-state).
- :mod:`~difflab.text.model` (saved models), :mod:`~difflab.text.train`, :mod:`~difflab.text.metrics`.
"""

from difflab.text import masking, samplers, uniform
from difflab.text.categorical import categorical, gumbel
from difflab.text.data import CharTokenizer, TokenData, load_tokens, shakespeare
from difflab.text.diffusion import autoregressive_nll, exact_nelbo, mask, nelbo
from difflab.text.exact import JointTable, UniformPosterior
from difflab.text.guidance import PromptGuidance
from difflab.text.model import TextModel, available, load, save_text_model
from difflab.text.transformer import Transformer

__all__ = [
    "CharTokenizer",
    "JointTable",
    "PromptGuidance",
    "TextModel",
    "TokenData",
    "Transformer",
    "UniformPosterior",
    "autoregressive_nll",
    "available",
    "categorical",
    "exact_nelbo",
    "gumbel",
    "load",
    "load_tokens",
    "mask",
    "masking",
    "nelbo",
    "samplers",
    "save_text_model",
    "shakespeare",
    "uniform",
]
