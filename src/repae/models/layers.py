"""Building blocks of the SiT latent diffusion transformer (REPA-E spec sections 2.2-2.4).

Contents, in the order the model uses them:

* :func:`sincos_pos_embed_2d` - fixed MAE-style 2D sin-cos table (column in the first half).
* :class:`PatchEmbed` - ``Conv2d(C -> D, kernel p, stride p)`` and row-major flattening.
* :class:`TimestepEmbedder` - continuous ``t`` in ``[0, 1]`` (NOT x1000), 256 frequencies, cos first.
* :class:`LabelEmbedder` - class table with an extra null row used for classifier-free guidance.
* :func:`modulate`, :class:`Attention`, :class:`Mlp`, :class:`SiTBlock` - adaLN-Zero transformer block.
* :class:`FinalLayer` - adaLN modulation + linear head back to ``p*p*C`` values per token.

Everything is written here rather than taken from ``timm.layers`` so that (a) the attention is
guaranteed to go through :func:`torch.nn.functional.scaled_dot_product_attention` regardless of
timm's ``TIMM_FUSED_ATTN`` switch, (b) every tensor line carries a shape comment, and (c) the
state-dict keys stay identical to the official SiT/REPA/REPA-E checkpoints (``x_embedder.proj``,
``t_embedder.mlp.0``, ``y_embedder.embedding_table``, ``blocks.i.attn.qkv``, ``blocks.i.mlp.fc1``,
``blocks.i.adaLN_modulation.1``, ``final_layer.linear``, ...), so released weights load strictly.

All modules are pure: no randomness in ``forward`` (label dropping is the explicit
:meth:`LabelEmbedder.drop`, never a side effect of ``module.training``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repae.errors import ConfigError

__all__ = [
    "sincos_pos_embed_2d",
    "PatchEmbed",
    "TimestepEmbedder",
    "LabelEmbedder",
    "modulate",
    "per_token",
    "Attention",
    "Mlp",
    "SiTBlock",
    "FinalLayer",
]

# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _sincos_1d(dim: int, pos: Tensor) -> Tensor:
    """``[sin(pos * w_k)] ++ [cos(pos * w_k)]`` with ``w_k = 10000^(-k / (dim/2))``, float64."""
    omega = torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0)  # [dim/2]
    omega = 1.0 / 10000.0**omega  # [dim/2]
    out = pos.reshape(-1, 1).to(torch.float64) * omega.reshape(1, -1)  # [P, dim/2]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)  # [P, dim]


def sincos_pos_embed_2d(dim: int, grid_size: int, *, device: torch.device | str | None = None) -> Tensor:
    """Fixed 2D sin-cos positional table ``[grid_size**2, dim]`` (float32), MAE style (spec 2.2).

    Token ``r * G + c`` (row ``r``, column ``c``) gets ``[emb_1d(c) ++ emb_1d(r)]``: the first
    ``dim/2`` channels encode the **column**, the last ``dim/2`` the **row** (spec 11.18). Each
    half is ``[sin(pos * w_k)]_{k<dim/4} ++ [cos(pos * w_k)]_{k<dim/4}``, ``w_k = 10000^(-k/(dim/4))``.
    Computed in float64, returned as float32. No cls token.
    """
    if dim % 4 != 0:
        raise ConfigError(f"sin-cos position embedding needs a hidden size divisible by 4, got {dim}; use a hidden size "
                          "that is a multiple of 4 (every preset's is)")
    coords = torch.arange(grid_size, dtype=torch.float64, device=device)  # [G]
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")  # [G, G] each; rows[r, c] = r
    emb_col = _sincos_1d(dim // 2, cols.reshape(-1))  # [G*G, dim/2]
    emb_row = _sincos_1d(dim // 2, rows.reshape(-1))  # [G*G, dim/2]
    return torch.cat([emb_col, emb_row], dim=1).to(torch.float32)  # [G*G, dim]


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation ``x * (1 + scale) + shift``, broadcast over tokens (spec 2.3).

    ``x`` is ``[B, T, D]``; ``shift`` and ``scale`` are ``[B, D]`` (one condition per sample), or
    ``[B, T, D]`` (one per token: the DiT^DH head, :mod:`repae.models.dh`).
    """
    return x * (1 + per_token(scale)) + per_token(shift)  # [B, T, D]


def per_token(v: Tensor) -> Tensor:
    """A modulation ``[B, D]`` as ``[B, 1, D]`` (broadcast over tokens); ``[B, T, D]`` unchanged."""
    return v.unsqueeze(1) if v.dim() == 2 else v


# ----------------------------------------------------------------------------------------------
# Embedders
# ----------------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """Non-overlapping patchify: ``Conv2d(C -> D, kernel p, stride p, bias)`` then flatten (spec 2.2).

    Tokens are ordered row-major over the ``(h/p) x (w/p)`` grid, like timm's ``PatchEmbed``.
    """

    def __init__(self, *, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.patch_size = patch_size  # p: side of a square patch in latent pixels
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)  # [B, D, h/p, w/p]
        return x.flatten(2).transpose(1, 2)  # [B, T, D]


class TimestepEmbedder(nn.Module):
    """Continuous-time embedding: sinusoidal features of ``t`` then ``Linear-SiLU-Linear`` (spec 2.2).

    ``t`` is the raw flow-matching time in ``[0, 1]`` (t=0 data, t=1 noise), **not** scaled by 1000
    (spec 11.18). Frequencies ``f_k = exp(-ln(10000) * k / 128)``, ``k < 128``; features are
    ``[cos(t f) ++ sin(t f)]`` (cos first), computed in float32.
    """

    def __init__(self, *, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size  # 256 sinusoidal features
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )

    @staticmethod
    def frequency_features(t: Tensor, dim: int = 256, max_period: float = 10000.0) -> Tensor:
        """``[cos(t f) ++ sin(t f)]`` for ``t`` of shape ``[B]``; float32 ``[B, dim]``."""
        half = dim // 2
        k = torch.arange(half, dtype=torch.float32, device=t.device)  # [half]
        freqs = torch.exp(-math.log(max_period) * k / half)  # [half]
        args = t.reshape(-1, 1).to(torch.float32) * freqs.reshape(1, -1)  # [B, half]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # [B, 2*half]
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)  # [B, dim]
        return emb  # [B, dim]

    def forward(self, t: Tensor) -> Tensor:
        t_freq = self.frequency_features(t, self.frequency_embedding_size)  # [B, 256] float32
        # Cast to the MLP's parameter dtype (equals t's dtype in the reference, where both are fp32);
        # this keeps a float64 sampler time or a bf16 model working.
        t_freq = t_freq.to(self.mlp[0].weight.dtype)  # [B, 256]
        return self.mlp(t_freq)  # [B, D]


class LabelEmbedder(nn.Module):
    """Class-label table; row ``num_classes`` is the null label when ``dropout_prob > 0`` (spec 2.2).

    The forward is a plain lookup. Classifier-free-guidance dropout is the explicit
    :meth:`drop`, called by the training step - it is not driven by ``module.training``.
    """

    def __init__(self, *, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.num_classes = num_classes  # number of real classes; null label id = num_classes
        self.dropout_prob = dropout_prob  # default probability used by callers (0.1 in SiT)
        self.has_null = dropout_prob > 0  # the reference only adds the null row when dropout is on
        self.embedding_table = nn.Embedding(num_classes + int(self.has_null), hidden_size)

    def drop(self, y: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
        """Replace each label independently by the null id ``num_classes`` with probability ``p``.

        The uniform draw happens on ``generator``'s device (``y``'s device without one) and the
        mask is moved to ``y``'s device. ``p == 0`` returns ``y`` unchanged without drawing.
        """
        if p <= 0:
            return y
        if not self.has_null:
            raise ConfigError(
                "label dropout needs a null-label row; build the SiT with class_dropout_prob > 0"
            )
        device = generator.device if generator is not None else y.device
        u = torch.rand(y.shape, generator=generator, device=device)  # [B]
        return self.apply_drop(y, u < p)  # [B]

    def apply_drop(self, y: Tensor, mask: Tensor) -> Tensor:
        """The one place labels become the null id: ``y`` where ``mask`` is False, ``num_classes`` where True.

        The trainer draws ``mask`` for the global batch (so runs do not depend on the number of
        processes) and hands it here; :meth:`drop` draws its own.
        """
        if not self.has_null and bool(mask.any()):
            raise ConfigError("label dropout needs a null-label row; build the SiT with class_dropout_prob > 0")
        return torch.where(mask.to(y.device), torch.full_like(y, self.num_classes), y)  # [B]

    def forward(self, y: Tensor) -> Tensor:
        return self.embedding_table(y)  # [B, D]


# ----------------------------------------------------------------------------------------------
# Transformer block
# ----------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (timm ``Attention`` layout, spec 2.3).

    Optional QK-norm applies ``LayerNorm(head_dim)`` (affine, eps 1e-5, as timm) to queries and
    keys. Scale ``head_dim ** -0.5``; no dropout. Uses ``F.scaled_dot_product_attention``.
    """

    def __init__(self, *, hidden_size: int, num_heads: int, qk_norm: bool = False):
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ConfigError(f"hidden size {hidden_size} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=True)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(hidden_size, hidden_size, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, self.head_dim)  # [B, T, 3, H, Dh]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, H, T, Dh]
        q, k = self.q_norm(q), self.k_norm(k)  # [B, H, T, Dh]
        out = F.scaled_dot_product_attention(q, k, v)  # [B, H, T, Dh]
        out = out.transpose(1, 2).reshape(B, T, D)  # [B, T, D]
        return self.proj(out)  # [B, T, D]


class Mlp(nn.Module):
    """``Linear(D -> rD) - GELU(tanh) - Linear(rD -> D)``, no dropout (spec 2.3)."""

    def __init__(self, *, hidden_size: int, mlp_ratio: float = 4.0):
        super().__init__()
        inner = int(hidden_size * mlp_ratio)
        self.fc1 = nn.Linear(hidden_size, inner, bias=True)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(inner, hidden_size, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))  # [B, T, D]


class SiTBlock(nn.Module):
    """adaLN-Zero transformer block (DiT/SiT; spec 2.3).

    ``(shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp) = Linear(SiLU(c))`` and::

        x = x + gate_msa * Attn(modulate(LN1(x), shift_msa, scale_msa))
        x = x + gate_mlp * MLP(modulate(LN2(x), shift_mlp, scale_mlp))

    LayerNorms have no affine parameters and eps 1e-6. With the zero-initialised modulation
    (spec 2.7) the block is the identity at initialisation.
    """

    def __init__(self, *, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size=hidden_size, num_heads=num_heads, qk_norm=qk_norm)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size=hidden_size, mlp_ratio=mlp_ratio)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        mods = self.adaLN_modulation(c).chunk(6, dim=-1)  # 6 x [B, D]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        x = x + per_token(gate_msa) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))  # [B, T, D]
        x = x + per_token(gate_mlp) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))  # [B, T, D]
        return x  # [B, T, D]


class FinalLayer(nn.Module):
    """``(shift, scale) = Linear(SiLU(c))``; ``Linear(modulate(LN(x))) -> p*p*C`` per token (spec 2.4).

    The width of the final layer equals the model's hidden size (this fixes the reference's
    broken SiT-S configs, whose final layer was 768 wide against a 384 hidden size; spec 2.1).
    """

    def __init__(self, *, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)  # 2 x [B, D]
        x = modulate(self.norm_final(x), shift, scale)  # [B, T, D]
        return self.linear(x)  # [B, T, p*p*C]
