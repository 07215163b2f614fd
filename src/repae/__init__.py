"""repae: end-to-end training of latent diffusion transformers and their VAE tokenizer.

Implements REPA-E (Leng et al., 2025, arXiv 2504.10483) together with its baselines
(REPA, vanilla SiT, naive end-to-end), samplers, metrics and latent analysis.

Conventions used everywhere in the package are defined once in :mod:`repae.conventions`.
"""

__version__ = "0.1.0"
