"""Latent-space analysis: the measurements behind REPA-E's argument (spec-related-methods.md 3.2, 4, 6).

One module per measurement, pure functions on tensors (no file IO):

* :mod:`repae.analysis.dct` -- blockwise 8x8 DCT-II spectra of images and latents (spec 3.2);
* :mod:`repae.analysis.latent_stats` -- spatial variance, total variation, TV/sqrt(SV) (spec 6.2) and
  image variance (between images: the fixed-pattern collapse);
* :mod:`repae.analysis.pca` -- PCA of latent channels -> RGB images (spec 6.3);
* :mod:`repae.analysis.cknna` -- CKNNA (Huh et al. 2024) and per-layer SiT-vs-encoder curves (spec 4).

The functions ``cknna`` and ``latent_stats`` share their module's name and are therefore not
re-exported here: ``from repae.analysis.cknna import cknna``.

File-writing code lives elsewhere: :mod:`repae.analysis.pipeline` (``repae analyze``),
:mod:`repae.analysis.report` (``repae report``) and :mod:`repae.analysis.health` (training hook).
"""

from repae.analysis.cknna import hsic_unbiased, layerwise_cknna, sit_hidden_states
from repae.analysis.dct import DCTSpectrum, blockwise_dct, blockwise_idct, dct_matrix, dct_spectrum, zigzag_order
from repae.analysis.latent_stats import LatentStats, image_variance, spatial_variance, total_variation
from repae.analysis.pca import PCAResult, pca_rgb

__all__ = [
    "DCTSpectrum", "blockwise_dct", "blockwise_idct", "dct_matrix", "dct_spectrum", "zigzag_order",
    "LatentStats", "image_variance", "spatial_variance", "total_variation",
    "PCAResult", "pca_rgb",
    "hsic_unbiased", "layerwise_cknna", "sit_hidden_states",
]
