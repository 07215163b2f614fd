"""REPA projector heads and target normalisations: REPA's MLP and iREPA's convolution (``align.projector``).

A projector maps the generator's hidden tokens ``[B, T, D]`` after block ``encoder_depth`` to the
width of one target encoder, ``[B, T, D_enc]``; the REPA loss (:mod:`repae.losses.alignment`)
then compares them token-wise with the encoder's patch tokens. Every generator (SiT, DiT,
LightningDiT) builds its heads here with :func:`build_projector`, so ``align.projector`` works
the same for every recipe.

Projectors (``align.projector``):

* ``mlp`` - REPA (Yu et al. 2024, sec. 3.2; REPA-E spec 2.5): token-wise
  ``Linear(D, 2048) - SiLU - Linear(2048, 2048) - SiLU - Linear(2048, D_enc)``. State-dict keys
  ``0.*``, ``2.*``, ``4.*`` as in the official SiT / REPA / REPA-E checkpoints.
* ``conv`` - iREPA (Singh et al. 2025, "What matters for representation alignment: global
  information or spatial structure?", sec. 4 and Algorithm 1): ONE ``Conv2d(D, D_enc, kernel 3,
  padding 1)`` on the token grid, so each projected token sees its 3x3 neighbourhood and the
  head cannot wash out spatial contrast the way a deep token-wise MLP does (their Fig. 6a).

Target normalisations (``align.target_norm``), applied to the *encoder* features, never to the
projections (iREPA sec. 4, "Spatial normalization layer"):

* ``none``    - REPA: the encoder tokens as they are.
* ``spatial`` - iREPA: per sample and per channel, over the T tokens,
  ``y = (x - gamma * mean_T(x)) / (std_T(x) + 1e-6)``. Removing (part of) the token mean strips the
  global component shared by all patches and raises the contrast between patches.

Choices made where the paper leaves room (each is a keyword so it can be changed):

1. ``gamma = 0.7``: the paper's Appendix G uses ``gamma in [0.6, 0.8]`` without one value per
   setting; 0.7 is the middle of that range (the public code's function default is 1.0, i.e. full
   centring, which ``gamma=1.0`` reproduces).
2. ``std`` is the unbiased (``T - 1``) standard deviation, as ``Tensor.std`` in Algorithm 1, and
   ``eps`` is added to the std, not the variance (Algorithm 1; the paper's equation writes
   ``sqrt(Var + eps)``, the code ``std + eps`` - we follow the code).
3. The conv projector keeps PyTorch's default ``Conv2d`` initialisation: the generators'
   ``initialize_weights`` (spec 2.7) only re-initialise ``nn.Linear`` layers, and the official
   code builds the conv the same way inside the model.
4. Tokens are laid out row-major on a square ``sqrt(T) x sqrt(T)`` grid (the patch-embed order,
   spec 2.2) before the convolution; a non-square token count raises :class:`ConfigError`.
5. The normalisation is computed in float32 under no autocast (the targets are constants).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from repae.errors import ConfigError

__all__ = [
    "PROJECTORS",
    "TARGET_NORMS",
    "ConvProjector",
    "mlp_projector",
    "build_projector",
    "spatial_normalize",
    "normalize_targets",
]

#: Names accepted by ``align.projector``.
PROJECTORS: tuple[str, ...] = ("mlp", "conv")
#: Names accepted by ``align.target_norm``.
TARGET_NORMS: tuple[str, ...] = ("none", "spatial")


# ----------------------------------------------------------------------------------------------
# Projector heads
# ----------------------------------------------------------------------------------------------


def mlp_projector(hidden_size: int, projector_dim: int, z_dim: int) -> nn.Sequential:
    """REPA head ``Linear(D, 2048) - SiLU - Linear(2048, 2048) - SiLU - Linear(2048, D_enc)`` (spec 2.5)."""
    return nn.Sequential(
        nn.Linear(hidden_size, projector_dim),
        nn.SiLU(),
        nn.Linear(projector_dim, projector_dim),
        nn.SiLU(),
        nn.Linear(projector_dim, z_dim),
    )


def _grid_side(num_tokens: int) -> int:
    g = int(round(math.sqrt(num_tokens)))
    if g * g != num_tokens:
        raise ConfigError(
            f"the conv projector needs a square token grid, got {num_tokens} tokens; "
            f"use align.projector=mlp or a square latent"
        )
    return g


class ConvProjector(nn.Module):
    """iREPA head: one ``Conv2d(D -> D_enc, kernel 3, padding 1)`` over the token grid (iREPA Alg. 1).

    ``[B, T, D] -> [B, T, D_enc]``; token ``r * G + c`` sits at row ``r``, column ``c`` of the
    ``G x G`` grid (``G = sqrt(T)``), the order of :class:`repae.models.layers.PatchEmbed`.
    """

    def __init__(self, *, hidden_size: int, z_dim: int, kernel_size: int = 3):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ConfigError(f"conv projector kernel_size must be odd (got {kernel_size}); use 3 as in iREPA")
        self.proj = nn.Conv2d(hidden_size, z_dim, kernel_size=kernel_size, padding=kernel_size // 2, bias=True)

    def forward(self, hidden: Tensor) -> Tensor:
        B, T, D = hidden.shape
        g = _grid_side(T)
        x = hidden.transpose(1, 2).reshape(B, D, g, g)  # [B, D, G, G]
        x = self.proj(x)  # [B, D_enc, G, G]
        return x.flatten(2).transpose(1, 2)  # [B, T, D_enc]


def build_projector(kind: str, *, hidden_size: int, projector_dim: int, z_dim: int) -> nn.Module:
    """The ``align.projector`` head ``kind`` (``mlp`` | ``conv``) mapping ``[B, T, D] -> [B, T, z_dim]``.

    ``projector_dim`` (2048) is the MLP's hidden width; the conv head has no hidden layer.
    """
    if kind == "mlp":
        return mlp_projector(hidden_size, projector_dim, z_dim)
    if kind == "conv":
        return ConvProjector(hidden_size=hidden_size, z_dim=z_dim)
    raise ConfigError(f"unknown projector {kind!r}; set align.projector to one of: {', '.join(PROJECTORS)}")


# ----------------------------------------------------------------------------------------------
# Target normalisation
# ----------------------------------------------------------------------------------------------


def spatial_normalize(z: Tensor, *, gamma: float = 0.7, eps: float = 1e-6) -> Tensor:
    """iREPA spatial normalisation of encoder tokens ``[B, T, D]`` (iREPA sec. 4, Alg. 1).

    ``y = (z - gamma * mean_T(z)) / (std_T(z - gamma * mean_T(z)) + eps)`` with statistics over the
    token axis, per sample and channel; unbiased std. Returns float32 ``[B, T, D]``.
    """
    if z.ndim != 3:
        raise ValueError(f"spatial_normalize expects encoder tokens [B, T, D], got {tuple(z.shape)}")
    if z.shape[1] < 2:
        raise ConfigError("spatial target normalisation needs at least 2 tokens; use align.target_norm=none")
    device_type = z.device.type if z.device.type in ("cuda", "cpu") else "cpu"
    with torch.autocast(device_type=device_type, enabled=False):
        x = z.float()  # [B, T, D]
        x = x - gamma * x.mean(dim=1, keepdim=True)  # [B, T, D]
        return x / (x.std(dim=1, keepdim=True) + eps)  # [B, T, D]


def normalize_targets(targets: Sequence[Tensor], mode: str, *, gamma: float = 0.7) -> list[Tensor]:
    """Apply ``align.target_norm`` (``none`` | ``spatial``) to every encoder's tokens ``[B, T, D_enc]``."""
    if mode == "none":
        return list(targets)
    if mode == "spatial":
        return [spatial_normalize(z, gamma=gamma) for z in targets]
    raise ConfigError(f"unknown target normalisation {mode!r}; set align.target_norm to one of: {', '.join(TARGET_NORMS)}")
