"""LightningDiT (Yao et al. 2025, VA-VAE paper sec. 4): a DiT/SiT with modern transformer parts.

Changes against SiT's block (spec-related-methods 1.6), each switchable in :class:`LightningDiTConfig`:

* **RMSNorm** (learnable scale, eps 1e-6, computed in float32) instead of the affine-free
  LayerNorm, in the blocks and the final layer (``use_rmsnorm``);
* **SwiGLU** feed-forward: ``w3(silu(a) * b)`` with ``(a, b) = w12(x)``, hidden width
  ``int(2/3 * 4 * D)`` (``use_swiglu``; Shazeer 2020);
* **2-D RoPE** on queries and keys in every block (``use_rope``), EVA-02 style: half of each head's
  dims rotate with the token's row, the other half with its column, frequencies
  ``theta^(-2k / (head_dim/2))`` with ``theta = 10000``, pairs interleaved ``(0,1), (2,3), ...``.
  The fixed 2-D sin-cos absolute embedding is still added at the input;
* optional **QK-norm** (RMSNorm over the head dim, before RoPE) - off in the published model.

Everything else is SiT's: adaLN-Zero modulation (6D), zero-initialised modulation and head,
sinusoidal time embedding, label table with a null row, and the REPA projector heads. The
published model (LightningDiT-XL/1 on VA-VAE's 16x16x32 latent) predicts the velocity, C output
channels, no learned sigma.

It is a drop-in for :class:`~repae.models.sit.SiT`: same ``forward(x_t, t, y, *, hidden_at,
stop_at_hidden) -> SiTOutput``, same ``project`` / ``drop_labels`` / ``num_tokens``, and the same
time convention (:mod:`repae.conventions`, t = 0 data, t = 1 noise), so every flow-matching recipe
(flow matching, REPA, REPA-E, LDM) trains it unchanged. Note: the *official* LightningDiT
checkpoints were trained with SiT's ``transport`` convention (t = 0 noise, velocity data - noise);
running them in this package's convention needs ``t -> 1 - t`` and ``v -> -v`` around the network.

State-dict names follow the official code: ``blocks.i.norm1.weight``, ``blocks.i.attn.qkv``,
``blocks.i.attn.{q,k}_norm.weight`` (QK-norm only), ``blocks.i.mlp.w12`` / ``w3``,
``blocks.i.adaLN_modulation.1``, ``final_layer.norm_final.weight``, ``feat_rope.freqs_cos`` /
``freqs_sin`` (persistent buffers ``[T, head_dim]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repae.errors import ConfigError
from repae.models.layers import LabelEmbedder, Mlp, PatchEmbed, TimestepEmbedder, modulate, per_token
from repae.models.projectors import build_projector
from repae.models.sit import TRANSFORMER_SIZES, SiT, SiTConfig, preset_config

__all__ = [
    "LightningDiTConfig",
    "LightningDiT",
    "LIGHTNINGDIT_PRESETS",
    "build_lightningdit",
    "lightningdit_config",
    "RMSNorm",
    "SwiGLUFFN",
    "RotaryEmbedding2D",
]


# ----------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last dim, computed in float32 (Zhang & Sennrich 2019)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps  # added to the mean square (1e-6 in LightningDiT)
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()  # [..., dim]
        out = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)  # [..., dim]
        return out.type_as(x) * self.weight  # [..., dim]


class SwiGLUFFN(nn.Module):
    """SwiGLU feed-forward ``w3(silu(a) * b)``, ``(a, b) = w12(x).chunk(2)`` (Shazeer 2020), biases on."""

    def __init__(self, *, hidden_size: int, inner_size: int):
        super().__init__()
        self.w12 = nn.Linear(hidden_size, 2 * inner_size, bias=True)
        self.w3 = nn.Linear(inner_size, hidden_size, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)  # 2 x [B, T, inner]
        return self.w3(F.silu(a) * b)  # [B, T, D]


def _rotate_pairs(x: Tensor) -> Tensor:
    """``(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)``: 90-degree rotation of each interleaved pair."""
    pairs = x.reshape(*x.shape[:-1], -1, 2)  # [..., Dh/2, 2]
    x_even, x_odd = pairs.unbind(dim=-1)  # [..., Dh/2] each
    return torch.stack((-x_odd, x_even), dim=-1).reshape(x.shape)  # [..., Dh]


class RotaryEmbedding2D(nn.Module):
    """2-D rotary position embedding on a ``G x G`` token grid (EVA-02 "VisionRotaryEmbeddingFast").

    For a head of width ``Dh`` each axis gets ``Dh/2`` dims: frequencies
    ``f_k = theta^(-2k / (Dh/2))`` for ``k < Dh/4``, each repeated for the two members of a pair.
    Token ``r * G + c`` rotates dims ``[0, Dh/2)`` by angles ``r * f`` and dims ``[Dh/2, Dh)`` by
    ``c * f``: ``rope(x) = x * cos + rotate_pairs(x) * sin`` (Su et al. 2021, eq. 34, per pair).
    The tables are computed in float32 as in the reference and stored as persistent buffers.
    """

    def __init__(self, *, head_dim: int, grid_size: int, theta: float = 10000.0):
        super().__init__()
        if head_dim % 4 != 0:
            raise ConfigError(f"2-D RoPE needs a head dim divisible by 4 (got {head_dim}); change hidden_size / num_heads")
        half = head_dim // 2  # rotary dims per axis
        freqs = 1.0 / theta ** (torch.arange(0, half, 2, dtype=torch.float32)[: half // 2] / half)  # [half/2]
        pos = torch.arange(grid_size, dtype=torch.float32)  # [G]
        ang = (pos[:, None] * freqs[None, :]).repeat_interleave(2, dim=-1)  # [G, half] (f0, f0, f1, f1, ...)
        rows = ang[:, None, :].expand(grid_size, grid_size, half)  # [G, G, half]  angle of the row r
        cols = ang[None, :, :].expand(grid_size, grid_size, half)  # [G, G, half]  angle of the column c
        table = torch.cat([rows, cols], dim=-1).reshape(grid_size * grid_size, head_dim)  # [T, Dh]
        self.register_buffer("freqs_cos", table.cos(), persistent=True)  # [T, Dh]
        self.register_buffer("freqs_sin", table.sin(), persistent=True)  # [T, Dh]

    def forward(self, x: Tensor) -> Tensor:
        """Rotate ``x`` ``[B, H, T, Dh]``; returns ``x``'s dtype."""
        cos, sin = self.freqs_cos.to(torch.float32), self.freqs_sin.to(torch.float32)  # [T, Dh]
        xf = x.float()  # [B, H, T, Dh]
        return (xf * cos + _rotate_pairs(xf) * sin).to(x.dtype)  # [B, H, T, Dh]


class LightningAttention(nn.Module):
    """Self-attention with fused ``qkv`` (bias), optional RMSNorm/LayerNorm QK-norm and RoPE, SDPA."""

    def __init__(self, *, hidden_size: int, num_heads: int, qk_norm: bool, use_rmsnorm: bool):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=True)
        norm = (lambda: RMSNorm(self.head_dim)) if use_rmsnorm else (lambda: nn.LayerNorm(self.head_dim))
        self.q_norm = norm() if qk_norm else nn.Identity()
        self.k_norm = norm() if qk_norm else nn.Identity()
        self.proj = nn.Linear(hidden_size, hidden_size, bias=True)

    def forward(self, x: Tensor, rope: RotaryEmbedding2D | None = None) -> Tensor:
        B, T, D = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, self.head_dim)  # [B, T, 3, H, Dh]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, H, T, Dh]
        q, k = self.q_norm(q), self.k_norm(k)  # [B, H, T, Dh]
        if rope is not None:
            q, k = rope(q), rope(k)  # [B, H, T, Dh]
        out = F.scaled_dot_product_attention(q, k, v)  # [B, H, T, Dh]
        return self.proj(out.transpose(1, 2).reshape(B, T, D))  # [B, T, D]


class LightningDiTBlock(nn.Module):
    """adaLN-Zero block (spec 2.3) with LightningDiT's norm / FFN / RoPE choices.

    ``x += gate_msa * Attn(modulate(N1(x)), rope)``; ``x += gate_mlp * FFN(modulate(N2(x)))``.
    """

    def __init__(self, *, hidden_size: int, num_heads: int, mlp_ratio: float, qk_norm: bool,
                 use_swiglu: bool, use_rmsnorm: bool):
        super().__init__()
        if use_rmsnorm:
            self.norm1, self.norm2 = RMSNorm(hidden_size), RMSNorm(hidden_size)
        else:
            self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
            self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = LightningAttention(hidden_size=hidden_size, num_heads=num_heads, qk_norm=qk_norm,
                                       use_rmsnorm=use_rmsnorm)
        inner = int(hidden_size * mlp_ratio)
        self.mlp = SwiGLUFFN(hidden_size=hidden_size, inner_size=int(2 / 3 * inner)) if use_swiglu else Mlp(
            hidden_size=hidden_size, mlp_ratio=mlp_ratio)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def forward(self, x: Tensor, c: Tensor, rope: RotaryEmbedding2D | None = None) -> Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + per_token(gate_msa) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), rope)  # [B, T, D]
        x = x + per_token(gate_mlp) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))  # [B, T, D]
        return x  # [B, T, D]


class LightningFinalLayer(nn.Module):
    """SiT's final layer (spec 2.4) with RMSNorm instead of LayerNorm when ``use_rmsnorm``."""

    def __init__(self, *, hidden_size: int, patch_size: int, out_channels: int, use_rmsnorm: bool):
        super().__init__()
        self.norm_final = (RMSNorm(hidden_size) if use_rmsnorm
                           else nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6))
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)  # 2 x [B, D]
        return self.linear(modulate(self.norm_final(x), shift, scale))  # [B, T, p*p*C]


# ----------------------------------------------------------------------------------------------
# Config and model
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LightningDiTConfig(SiTConfig):
    """Architecture of a LightningDiT: a :class:`SiTConfig` plus the spec 1.6 switches (final config defaults)."""

    use_swiglu: bool = True  # SwiGLU FFN, hidden int(2/3 * mlp_ratio * D)
    use_rmsnorm: bool = True  # RMSNorm (learnable scale) in blocks, final layer and QK-norm
    use_rope: bool = True  # 2-D RoPE on q and k in every block (absolute sin-cos is always added)
    rope_theta: float = 10000.0  # RoPE base

    def validate(self) -> None:
        if self.input_size % self.patch_size != 0:
            raise ConfigError(
                f"latent size {self.input_size} is not divisible by LightningDiT patch size {self.patch_size}; "
                f"pick a LightningDiT '/p' preset whose p divides the latent size"
            )
        super().validate()
        if self.use_rope and self.head_depth and (self.head_hidden_size // self.head_num_heads) % 4:
            raise ConfigError(f"RoPE needs the DiT^DH head dim {self.head_hidden_size // self.head_num_heads} "
                              "divisible by 4; change model.dh_width / model.dh_heads")
        if self.use_rope and (self.hidden_size // self.num_heads) % 4 != 0:
            raise ConfigError(
                f"RoPE needs head dim {self.hidden_size // self.num_heads} divisible by 4; set use_rope=False "
                f"or change hidden_size / num_heads"
            )


class LightningDiT(SiT):
    """LightningDiT, drop-in for :class:`SiT` (same forward, output type, projector interface)."""

    #: Which objective trains this network: "flow" (:mod:`repae.diffusion.objective`).
    objective_kind = "flow"

    def __init__(self, config: LightningDiTConfig):  # noqa: D401 - builds its own modules
        if not isinstance(config, LightningDiTConfig):
            raise ConfigError("LightningDiT needs a LightningDiTConfig; use build_lightningdit(name, ...)")
        config.validate()
        # Deliberately skip SiT.__init__ (it would build SiT blocks); reuse SiT's helpers and init.
        nn.Module.__init__(self)
        self.config = config
        D, p, C = config.hidden_size, config.patch_size, config.in_channels
        self.x_embedder = PatchEmbed(patch_size=p, in_channels=C, hidden_size=D)
        self.t_embedder = TimestepEmbedder(hidden_size=D)
        self.y_embedder = LabelEmbedder(num_classes=config.num_classes, hidden_size=D,
                                        dropout_prob=config.class_dropout_prob)
        if config.learn_pos_embed:  # as SiT: a trainable table initialised with sin-cos
            self.pos_embed = nn.Parameter(torch.zeros(1, config.num_tokens, D))  # [1, T, D]
        else:  # fixed sin-cos table, saved but never optimised
            self.register_buffer("pos_embed", torch.zeros(1, config.num_tokens, D), persistent=True)  # [1, T, D]
        grid = config.input_size // p
        self.feat_rope = (RotaryEmbedding2D(head_dim=D // config.num_heads, grid_size=grid, theta=config.rope_theta)
                          if config.use_rope else None)
        self.blocks = nn.ModuleList(
            LightningDiTBlock(hidden_size=D, num_heads=config.num_heads, mlp_ratio=config.mlp_ratio,
                              qk_norm=config.qk_norm, use_swiglu=config.use_swiglu, use_rmsnorm=config.use_rmsnorm)
            for _ in range(config.depth)
        )
        self.projectors = nn.ModuleList(
            build_projector(config.projector, hidden_size=D, projector_dim=config.projector_dim, z_dim=z)
            for z in config.z_dims
        )
        self.attach_output(LightningFinalLayer(hidden_size=D, patch_size=p, out_channels=C,
                                               use_rmsnorm=config.use_rmsnorm))
        self.initialize_weights()  # spec 2.7 (LightningDiT uses DiT's initialisation); RMSNorm scales stay 1

    @classmethod
    def from_preset(cls, name: str, **kwargs: Any) -> LightningDiT:
        """Same as :func:`build_lightningdit`."""
        return build_lightningdit(name, **kwargs)

    def block_kwargs(self) -> dict[str, Any]:
        """The 2-D RoPE tables every block uses; the forward itself is :meth:`SiT.forward`."""
        return {"rope": self.feat_rope}

    def build_head(self) -> nn.Module:
        """The DiT^DH head with LightningDiT's blocks, final layer and a RoPE for the head's head dim (RAE's
        DiT^DH is built on LightningDiT; :class:`repae.models.dh.DHHead`)."""
        from repae.models.dh import DHHead

        cfg = self.config
        W, heads = cfg.head_hidden_size, cfg.head_num_heads
        rope = (RotaryEmbedding2D(head_dim=W // heads, grid_size=cfg.input_size // cfg.patch_size,
                                  theta=cfg.rope_theta) if cfg.use_rope else None)
        return DHHead(
            in_channels=cfg.in_channels, out_channels=cfg.in_channels, patch_size=cfg.patch_size,
            input_size=cfg.input_size, trunk_size=cfg.hidden_size, hidden_size=W, num_heads=heads,
            depth=cfg.head_depth, rope=rope,
            block=lambda w, h: LightningDiTBlock(hidden_size=w, num_heads=h, mlp_ratio=cfg.mlp_ratio,
                                                 qk_norm=cfg.qk_norm, use_swiglu=cfg.use_swiglu,
                                                 use_rmsnorm=cfg.use_rmsnorm),
            final=lambda w: LightningFinalLayer(hidden_size=w, patch_size=cfg.patch_size,
                                                out_channels=cfg.in_channels, use_rmsnorm=cfg.use_rmsnorm))


# ----------------------------------------------------------------------------------------------
# Presets (VA-VAE paper: LightningDiT-B and -XL; "T" = tiny CPU presets for tests)
# ----------------------------------------------------------------------------------------------

_SIZES: dict[str, dict[str, int]] = {k: TRANSFORMER_SIZES[k] for k in ("T", "B", "XL")}
_PATCHES: dict[str, tuple[int, ...]] = {"T": (1, 2), "B": (1,), "XL": (1, 2)}

#: ``"LightningDiT-XL/1" -> {"depth": 28, "hidden_size": 1152, "num_heads": 16, "patch_size": 1}`` etc.
LIGHTNINGDIT_PRESETS: dict[str, dict[str, int]] = {
    f"LightningDiT-{size}/{p}": {**arch, "patch_size": p} for size, arch in _SIZES.items() for p in _PATCHES[size]
}


def lightningdit_config(name: str, *, input_size: int, in_channels: int, **kwargs: Any) -> LightningDiTConfig:
    """The validated :class:`LightningDiTConfig` of preset ``name`` (arguments: see :func:`build_lightningdit`)."""
    return preset_config(LightningDiTConfig, LIGHTNINGDIT_PRESETS, "LightningDiT", name, input_size=input_size,
                         in_channels=in_channels, **kwargs)


def build_lightningdit(name: str, **kwargs) -> LightningDiT:
    """Build preset ``name`` (a key of :data:`LIGHTNINGDIT_PRESETS`) for a latent of side ``input_size``.

    Keyword arguments are those of :func:`repae.models.sit.build_sit` plus the switches
    ``use_swiglu``, ``use_rmsnorm``, ``use_rope`` (all True = the published model); ``qk_norm``
    (False in the published model) uses RMSNorm when ``use_rmsnorm``.
    """
    return LightningDiT(lightningdit_config(name, **kwargs))
