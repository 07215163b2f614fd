"""REPA alignment loss: negative mean token-wise cosine similarity (REPA eq. 3; REPA-E spec 2.8 step 9).

For encoders ``i = 1..N``, samples ``j = 1..B`` and tokens ``n = 1..T``::

    L_REPA = -1/(N B) sum_i sum_j 1/T sum_n cos(h_phi(h_t)[i, j, n], z*[i, j, n])

where ``h_phi(h_t)`` is the SiT projector output (:meth:`repae.models.sit.SiT.project`) and
``z*`` the frozen encoder's patch tokens. Both are L2-normalised along the feature dim
(``F.normalize``, eps 1e-12); there is no extra division by the feature width (spec 11.17).
Computed in float32 with autocast disabled, vectorised over batch and tokens. The result lies in
``[-1, 1]``; it equals -1 when the projections point along the targets.

In REPA-E the same loss is used twice per step (spec 1.3): weight 1.5 through the frozen SiT into
the VAE, and weight 0.5 on the detached latent for the SiT and projector.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from repae.diffusion.objective import fp32_region

__all__ = ["repa_loss", "repa_loss_per_sample"]


def _check(projected: Sequence[Tensor], targets: Sequence[Tensor]) -> None:
    if len(projected) != len(targets):
        raise ValueError(
            f"{len(projected)} projector outputs for {len(targets)} encoders; build the SiT with "
            f"one z_dims entry per target encoder"
        )
    if len(projected) == 0:
        raise ValueError("repa_loss needs at least one encoder; build the SiT with z_dims=(encoder width,)")
    for i, (p, z) in enumerate(zip(projected, targets)):
        if p.ndim != 3 or z.ndim != 3:
            raise ValueError(f"encoder {i}: expected [B, T, D] tensors, got {tuple(p.shape)} and {tuple(z.shape)}")
        if p.shape[0] != z.shape[0]:
            raise ValueError(f"encoder {i}: batch {p.shape[0]} of projections != batch {z.shape[0]} of targets; pass "
                             "the encoder features of the same images")
        if p.shape[1] != z.shape[1]:
            raise ValueError(
                f"encoder {i}: SiT has {p.shape[1]} tokens but the encoder gives {z.shape[1]}; pick the SiT "
                f"patch size so that (latent size / patch)^2 equals the encoder's token grid "
                f"(f8d4 -> SiT-*/2, f16d32 -> SiT-*/1 for 256 tokens)"
            )
        if p.shape[2] != z.shape[2]:
            raise ValueError(
                f"encoder {i}: projector width {p.shape[2]} != encoder width {z.shape[2]}; build the SiT with "
                f"z_dims set to the encoders' embed_dim"
            )


def repa_loss_per_sample(projected: Sequence[Tensor], targets: Sequence[Tensor]) -> Tensor:
    """Per-sample REPA loss ``[B]``: ``-mean over encoders and tokens of cos(projected, target)``."""
    _check(projected, targets)
    with fp32_region(projected[0].device):
        per_enc = []
        for p, z in zip(projected, targets):  # loop over encoders only (usually one)
            p_n = F.normalize(p.float(), dim=-1, eps=1e-12)  # [B, T, D_enc]
            z_n = F.normalize(z.float(), dim=-1, eps=1e-12)  # [B, T, D_enc]
            cos = (p_n * z_n).sum(dim=-1)  # [B, T]
            per_enc.append(-cos.mean(dim=-1))  # [B]
        return torch.stack(per_enc, dim=0).mean(dim=0)  # [B]


def repa_loss(projected: Sequence[Tensor], targets: Sequence[Tensor]) -> Tensor:
    """Scalar REPA loss = -(mean cosine over encoders, samples and tokens), fp32.

    Args:
        projected: one ``[B, T, D_enc_i]`` tensor per encoder (``SiT.project(hidden)``).
        targets: the matching encoder patch tokens ``[B, T, D_enc_i]`` (computed under no_grad).

    Raises:
        ValueError: different numbers of tensors, batch, token count or width; the message names the fix.
    """
    return repa_loss_per_sample(projected, targets).mean()  # []
