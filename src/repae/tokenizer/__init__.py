"""The tokenizer: KL autoencoder (diffusers ``AutoencoderKL``) + per-channel latent normaliser.

Public API: :class:`Tokenizer`, :class:`TokenizerOutput`, :class:`LatentNormalizer`,
:class:`VAEConfig`, :data:`VAE_PRESETS`, :func:`build_vae`, :class:`DiagonalGaussian`,
:func:`compute_latent_stats`, :func:`load_stats`, :func:`save_stats`, and the layout converters
:func:`ldm_to_diffusers` / :func:`diffusers_to_ldm` / :func:`detect_layout`.
"""

from repae.interop.io import KeyLayoutError
from repae.interop.vae import detect_layout, diffusers_to_ldm, ldm_to_diffusers
from repae.tokenizer.normalizer import LatentNormalizer
from repae.tokenizer.stats import compute_latent_stats, load_stats, save_stats, to_scale_bias
from repae.tokenizer.tokenizer import LoadReport, Tokenizer, TokenizerOutput
from repae.tokenizer.vae import VAE_PRESETS, DiagonalGaussian, VAEConfig, build_vae, get_vae_config

__all__ = [
    "Tokenizer", "TokenizerOutput", "LoadReport", "LatentNormalizer", "VAEConfig", "VAE_PRESETS", "build_vae",
    "get_vae_config", "DiagonalGaussian", "compute_latent_stats", "load_stats", "save_stats", "to_scale_bias",
    "ldm_to_diffusers", "diffusers_to_ldm", "detect_layout", "KeyLayoutError",
]
