"""repae: end-to-end training of latent diffusion transformers and their VAE tokenizer.

Implements REPA-E (Leng et al., 2025, arXiv 2504.10483) together with its baselines
(REPA, vanilla SiT, naive end-to-end), samplers, metrics and latent analysis.

Conventions used everywhere in the package are defined once in :mod:`repae.conventions`.
"""

__version__ = "0.1.0"


def __getattr__(name: str):  # lazy: `import repae` stays cheap; `repae.train(...)` imports what it needs
    if name in ("train", "load", "default_hooks"):
        from repae import api

        return getattr(api, name)
    if name == "Tokenizer":
        from repae.tokenizer.tokenizer import Tokenizer

        return Tokenizer
    raise AttributeError(f"module 'repae' has no attribute {name!r}")
