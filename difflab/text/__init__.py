"""Layer 4: discrete diffusion for text: masked (absorbing-state) diffusion language models.

    model = difflab.text.load("shakespeare")                       # shipped masked diffusion model
    out = model.generate(8, length=256, sampler="first_hitting", seed=0)
    print(out.texts[0])

- :mod:`~difflab.text.masking`: masking schedules alpha_t (linear, cosine, log_linear).
- :mod:`~difflab.text.diffusion`: forward masking, the MDLM negative ELBO with SUBS (Monte Carlo and
  exact by enumeration), the autoregressive NLL.
- :mod:`~difflab.text.samplers`: ancestral (cached), first-hitting, confidence (MaskGIT),
  semi-autoregressive blocks: ``sampler(network, z, steps, *, generator, callback, **options)``.
- :mod:`~difflab.text.categorical`: Gumbel-max categorical sampling in float64.
- :mod:`~difflab.text.transformer`: one transformer, bidirectional or causal.
- :mod:`~difflab.text.data`: character tokenizer, tiny Shakespeare, integer-token files.
- :mod:`~difflab.text.exact`: a joint table over short sequences with exact conditionals.
- :mod:`~difflab.text.model` (saved models), :mod:`~difflab.text.train`, :mod:`~difflab.text.metrics`.
"""

from difflab.text import masking, samplers
from difflab.text.categorical import categorical, gumbel
from difflab.text.data import CharTokenizer, TokenData, load_tokens, shakespeare
from difflab.text.diffusion import autoregressive_nll, exact_nelbo, mask, nelbo
from difflab.text.exact import JointTable
from difflab.text.model import TextModel, available, load, save_text_model
from difflab.text.transformer import Transformer

__all__ = [
    "CharTokenizer",
    "JointTable",
    "TextModel",
    "TokenData",
    "Transformer",
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
]
