"""SiT: the latent diffusion transformer of REPA / REPA-E, with its REPA projector heads (spec 2).

The network maps a *normalised* noised latent ``x_t`` ``[B, C, h, w]``, a time ``t`` ``[B]`` in
``[0, 1]`` (t=0 data, t=1 noise, see :mod:`repae.conventions`) and class labels ``y`` ``[B]`` to a
velocity prediction ``[B, C, h, w]``. The forward is **pure**: unlike the reference
``models/sit.py`` it holds no latent BatchNorm (that belongs to the tokenizer), samples no time or
noise and computes no loss (that is :mod:`repae.diffusion.objective` and :mod:`repae.losses`),
and does not drop labels on its own (call :meth:`SiT.drop_labels` explicitly).

One forward serves training, alignment-only passes and sampling::

    model = build_sit("SiT-XL/2", input_size=32, in_channels=4, num_classes=1000, z_dims=(768,))
    out = model(x_t, t, y, hidden_at=8)             # prediction [B,4,32,32], hidden [B,256,1152]
    zs_tilde = model.project(out.hidden)            # [[B,256,768]] for the REPA loss
    out = model(x_t, t, y, hidden_at=8, stop_at_hidden=True)  # REPA-E VAE pass: blocks 1..8 only

Parameter names follow the official checkpoints (minus the ``bn.*`` buffers), so released SiT /
REPA / REPA-E ``ema`` weights load with ``strict=False`` after dropping ``bn.*``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from repae.errors import ConfigError
from repae.models.layers import FinalLayer, LabelEmbedder, PatchEmbed, SiTBlock, TimestepEmbedder, sincos_pos_embed_2d
from repae.models.projectors import PROJECTORS, build_projector

__all__ = ["SiTConfig", "SiTOutput", "SiT", "SIT_PRESETS", "build_sit", "sit_config"]


# ----------------------------------------------------------------------------------------------
# Config and output
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SiTConfig:
    """Architecture of a SiT (spec 2.1). Saved with checkpoints so a run can rebuild its model."""

    depth: int  # number of adaLN-Zero blocks
    hidden_size: int  # token width D
    num_heads: int  # attention heads (head dim = D / heads)
    patch_size: int  # p: latent patch side; T = (input_size / p)^2 tokens
    input_size: int  # latent side h = w
    in_channels: int  # latent channels C (output has the same C; no learned sigma)
    num_classes: int = 1000  # real classes; null label id = num_classes
    class_dropout_prob: float = 0.1  # CFG label dropout p used by SiT.drop_labels (spec 2.2)
    mlp_ratio: float = 4.0  # MLP hidden = mlp_ratio * D
    qk_norm: bool = False  # LayerNorm on queries and keys (off in REPA-E)
    encoder_depth: int = 8  # REPA: projector reads the output of this block (1-based; spec 2.5)
    z_dims: tuple[int, ...] = ()  # widths of the target encoders, one projector each (spec 2.5)
    projector_dim: int = 2048  # projector MLP hidden width (spec 2.5)
    projector: str = "mlp"  # REPA head: "mlp" (REPA) | "conv" (iREPA); see repae.models.projectors
    # The official REPA/REPA-E code declares the sin-cos table frozen but passes it to the optimiser
    # and re-enables its gradient every step, so it is trained there. False (default): fixed, as the
    # paper describes; True: a trainable parameter initialised with the sin-cos table, as officially run.
    learn_pos_embed: bool = False
    # DiT^DH (RAE, Zheng et al. 2025, sec. 5; repae.models.dh): a wide shallow head after the blocks that
    # replaces the final layer; 0 blocks = no head (SiT / DiT / LightningDiT as published)
    head_depth: int = 0  # DiT^DH-XL: 2
    head_hidden_size: int = 2048  # head width W
    head_num_heads: int = 16

    def __post_init__(self) -> None:
        object.__setattr__(self, "z_dims", tuple(int(z) for z in self.z_dims))

    @property
    def num_tokens(self) -> int:
        """T = (input_size / patch_size)^2."""
        return (self.input_size // self.patch_size) ** 2

    def validate(self) -> None:
        """Raise :class:`ConfigError` (one line naming the fix) for configs that cannot work."""
        if self.input_size % self.patch_size != 0:
            raise ConfigError(
                f"latent size {self.input_size} is not divisible by SiT patch size {self.patch_size}; "
                f"pick a SiT '/p' preset whose p divides the latent size"
            )
        if not 1 <= self.encoder_depth <= self.depth:
            raise ConfigError(
                f"encoder_depth={self.encoder_depth} must be between 1 and the SiT depth {self.depth}; "
                f"set align.depth to a block index in 1..{self.depth}"
            )
        if self.hidden_size % self.num_heads != 0 or self.hidden_size % 4 != 0:
            raise ConfigError(
                f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads} and by 4"
            )
        if self.class_dropout_prob < 0 or self.class_dropout_prob > 1:
            raise ConfigError(f"class_dropout_prob={self.class_dropout_prob} must lie in [0, 1]")
        if self.projector not in PROJECTORS:
            raise ConfigError(f"unknown projector {self.projector!r}; set align.projector to one of: {', '.join(PROJECTORS)}")
        if self.head_depth < 0 or (self.head_depth and (self.head_hidden_size % self.head_num_heads
                                                        or self.head_hidden_size % 4)):
            raise ConfigError(f"DiT^DH head: depth {self.head_depth} must be >= 0 and width {self.head_hidden_size} "
                              f"divisible by its heads {self.head_num_heads} and by 4; fix model.dh_width / model.dh_heads")

    @property
    def width(self) -> int:
        """The width of the layers that produce the prediction: the DiT^DH head's, else the trunk's."""
        return self.head_hidden_size if self.head_depth else self.hidden_size


@dataclass
class SiTOutput:
    """What :meth:`SiT.forward` returns.

    ``prediction`` is the velocity ``[B, C, h, w]`` (``None`` when ``stop_at_hidden``);
    ``hidden`` is the token stream ``[B, T, D]`` after block ``hidden_at`` (``None`` if not asked).
    """

    prediction: Tensor | None
    hidden: Tensor | None = None


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


def _projector(hidden_size: int, projector_dim: int, z_dim: int, kind: str = "mlp") -> nn.Module:
    """REPA head (spec 2.5) or iREPA's conv head; see :func:`repae.models.projectors.build_projector`."""
    return build_projector(kind, hidden_size=hidden_size, projector_dim=projector_dim, z_dim=z_dim)


class SiT(nn.Module):
    """Scalable Interpolant Transformer (Ma et al. 2024) as used by REPA-E (spec 2)."""

    def __init__(self, config: SiTConfig):
        super().__init__()
        config.validate()
        self.config = config
        D, p, C = config.hidden_size, config.patch_size, config.in_channels
        # Registration order mirrors the reference so default-init RNG draws happen in the same order.
        self.x_embedder = PatchEmbed(patch_size=p, in_channels=C, hidden_size=D)
        self.t_embedder = TimestepEmbedder(hidden_size=D)
        self.y_embedder = LabelEmbedder(
            num_classes=config.num_classes, hidden_size=D, dropout_prob=config.class_dropout_prob
        )
        if config.learn_pos_embed:  # reproduces official runs: their "frozen" table sits in the optimiser
            self.pos_embed = nn.Parameter(torch.zeros(1, config.num_tokens, D))  # [1, T, D], sin-cos init
        else:  # the paper's design: a fixed table, a persistent buffer so it is saved but never optimised
            self.register_buffer("pos_embed", torch.zeros(1, config.num_tokens, D), persistent=True)  # [1, T, D]
        self.blocks = nn.ModuleList(
            SiTBlock(hidden_size=D, num_heads=config.num_heads, mlp_ratio=config.mlp_ratio, qk_norm=config.qk_norm)
            for _ in range(config.depth)
        )
        self.projectors = nn.ModuleList(
            _projector(D, config.projector_dim, z, config.projector) for z in config.z_dims
        )
        self.attach_output(FinalLayer(hidden_size=D, patch_size=p, out_channels=C))
        self.initialize_weights()

    def attach_output(self, final_layer: nn.Module) -> None:
        """The output of the network: ``final_layer``, or with ``config.head_depth`` the DiT^DH head
        (:meth:`build_head`) in its place (then there is no ``final_layer``)."""
        self.head = self.build_head() if self.config.head_depth else None
        if self.head is None:
            self.final_layer = final_layer

    def build_head(self) -> nn.Module:
        """The DiT^DH head with SiT's blocks and final layer (:class:`repae.models.dh.DHHead`)."""
        from repae.models.dh import DHHead

        cfg = self.config
        return DHHead(
            in_channels=cfg.in_channels, out_channels=cfg.in_channels, patch_size=cfg.patch_size,
            input_size=cfg.input_size, trunk_size=cfg.hidden_size, hidden_size=cfg.head_hidden_size,
            num_heads=cfg.head_num_heads, depth=cfg.head_depth,
            block=lambda w, h: SiTBlock(hidden_size=w, num_heads=h, mlp_ratio=cfg.mlp_ratio, qk_norm=cfg.qk_norm),
            final=lambda w: FinalLayer(hidden_size=w, patch_size=cfg.patch_size, out_channels=cfg.in_channels))

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_preset(cls, name: str, **kwargs: Any) -> SiT:
        """Same as :func:`build_sit`."""
        return build_sit(name, **kwargs)

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """Initialisation of spec 2.7, in its order; afterwards the output is exactly 0."""

        def _xavier_linear(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

        self.apply(_xavier_linear)  # 1. every Linear (attention, MLPs, adaLN, t-MLP, projectors, head)
        grid = int(round(self.config.num_tokens**0.5))
        pos = sincos_pos_embed_2d(self.config.hidden_size, grid, device=self.pos_embed.device)  # [T, D]
        self.pos_embed.copy_(pos.unsqueeze(0))  # 2. fixed sin-cos table  [1, T, D]
        w = self.x_embedder.proj.weight  # [D, C, p, p]
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # 3. patch conv as a [D, C*p*p] matrix
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)  # 4. label table
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)  # 5. timestep MLP weights
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:  # 6. adaLN-Zero: every block starts as the identity
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        if self.head is not None:  # DiT^DH: its table, patch conv, zero adaLN and zero output
            self.head.initialize_weights()
            return
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)  # 7. zero head -> output 0
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    # -- helpers ------------------------------------------------------------------------------

    @property
    def num_tokens(self) -> int:
        """T = (input_size / patch_size)^2, the token count the REPA targets must match."""
        return self.config.num_tokens

    def num_params(self, include_projectors: bool = False) -> int:
        """Number of trainable-tensor elements (the fixed ``pos_embed`` buffer is not counted unless learnt)."""
        return sum(
            p.numel()
            for name, p in self.named_parameters()
            if include_projectors or not name.startswith("projectors.")
        )

    def drop_labels(self, y: Tensor, generator: torch.Generator | None = None, *, mask: Tensor | None = None
                    ) -> Tensor:
        """CFG label dropout (spec 2.2): with ``config.class_dropout_prob`` drawn on ``generator``, or at a
        given ``mask`` [B] bool (the trainer's global-batch draw); see :class:`LabelEmbedder`."""
        if mask is not None:
            return self.y_embedder.apply_drop(y, mask)
        return self.y_embedder.drop(y, self.config.class_dropout_prob, generator=generator)

    def unpatchify(self, x: Tensor) -> Tensor:
        """``[B, T, p*p*C] -> [B, C, h, w]``; within a token the channel varies fastest (spec 2.4)."""
        p, C = self.config.patch_size, self.config.in_channels
        g = self.config.input_size // p
        x = x.reshape(x.shape[0], g, g, p, p, C)  # [B, h/p, w/p, p, p, C]
        x = torch.einsum("nhwpqc->nchpwq", x)  # [B, C, h/p, p, w/p, p]
        return x.reshape(x.shape[0], C, g * p, g * p)  # [B, C, h, w]

    def project(self, hidden: Tensor) -> list[Tensor]:
        """REPA projections of ``hidden`` ``[B, T, D]``: one ``[B, T, D_enc]`` per entry of ``z_dims``."""
        return [proj(hidden) for proj in self.projectors]  # each [B, T, D_enc]

    # -- forward ------------------------------------------------------------------------------

    def forward(
        self,
        x_t: Tensor,
        t: Tensor,
        y: Tensor,
        *,
        hidden_at: int | None = None,
        stop_at_hidden: bool = False,
    ) -> SiTOutput:
        """Velocity prediction for normalised noised latents (spec 2.8 steps 5-7, 2.9).

        Args:
            x_t: normalised noised latent ``[B, C, h, w]``.
            t: time ``[B]`` (or a scalar, broadcast) in ``[0, 1]``; t=0 data, t=1 noise.
            y: labels ``[B]`` int64 in ``[0, num_classes]`` (``num_classes`` = null), already
               dropped by the caller if wanted.
            hidden_at: return the token stream after this block (1-based), e.g. ``encoder_depth``.
            stop_at_hidden: skip the remaining blocks and the final layer (REPA-E's alignment-only
               pass, spec 1.3 step F); ``prediction`` is then ``None``.
        """
        depth = self.config.depth
        if hidden_at is not None and not 1 <= hidden_at <= depth:
            raise ValueError(f"hidden_at={hidden_at} must be a block index in 1..{depth}")
        if stop_at_hidden and hidden_at is None:
            raise ValueError("stop_at_hidden=True needs hidden_at: pass the block after which to stop")
        B = x_t.shape[0]
        t = t.reshape(-1).expand(B) if t.numel() == 1 else t.reshape(B)  # [B]

        x = self.x_embedder(x_t) + self.pos_embed  # [B, T, D]
        t_emb = self.t_embedder(t)  # [B, D]
        c = t_emb + self.y_embedder(y)  # [B, D]
        head_in = (x_t, t_emb) if self.head is not None else None
        return self.run_blocks(x, c, hidden_at=hidden_at, stop_at_hidden=stop_at_hidden, head_in=head_in,
                               **self.block_kwargs())

    def block_kwargs(self) -> dict[str, Any]:
        """Extra inputs every block takes besides ``(x, c)`` (none for SiT/DiT; LightningDiT's RoPE)."""
        return {}

    def run_blocks(self, x: Tensor, c: Tensor, *, hidden_at: int | None, stop_at_hidden: bool,
                   head_in: tuple[Tensor, Tensor] | None = None, **block_kw: Any) -> SiTOutput:
        """Blocks -> final layer, keeping the tokens after block ``hidden_at`` (REPA's hidden state).

        Shared by every generator family (SiT, DiT, LightningDiT passes its RoPE in ``block_kw``).
        With a DiT^DH head, ``head_in = (x_t, t_emb)`` and the head replaces the final layer.
        """
        hidden = None
        for i, block in enumerate(self.blocks, start=1):
            x = block(x, c, *block_kw.values())  # [B, T, D]
            if i == hidden_at:
                hidden = x  # [B, T, D]
                if stop_at_hidden:
                    return SiTOutput(prediction=None, hidden=hidden)
        if self.head is not None:
            x = self.head(head_in[0], x, head_in[1])  # [B, T, p*p*C]
        else:
            x = self.final_layer(x, c)  # [B, T, p*p*C]
        return SiTOutput(prediction=self.unpatchify(x), hidden=hidden)  # prediction [B, C, h, w]


# ----------------------------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------------------------

# depth / hidden / heads per size (spec 2.1). SiT-S's final layer is hidden-wide here (384), which
# fixes the reference's broken 768-wide SiT-S head. "T" = tiny CPU presets for tests and demos.
# The REPA projector is the paper's 2048-wide MLP for every size (spec 2.5). On the 64-wide "T" model
# that head has 4.7 M parameters (20x the transformer) and is ~85 % of a CPU REPA step;
# model.projector_dim=256 makes the step 2.5-4x faster, but the embedded REPA-E main job then
# reached FD 23.4 instead of 12.1 (README), so the default keeps 2048 (repae study pins 256 for speed).
# "XS" (6 blocks of ViT-Ti width: 4.2 M parameters against T's 0.33 M) is the embedded main job's
# generator; with a 512-wide REPA head (0.6 M) its step costs fewer FLOPs than T with the 2048-wide
# head (5.4 M parameters, 16x T itself): per image ~0.5 vs ~0.7 GFLOP forward (issue 21).
TRANSFORMER_SIZES: dict[str, dict[str, int]] = {  # shared by SiT, DiT and LightningDiT
    "T": {"depth": 4, "hidden_size": 64, "num_heads": 2, "encoder_depth": 2},
    "XS": {"depth": 6, "hidden_size": 192, "num_heads": 3, "encoder_depth": 2},
    "S": {"depth": 12, "hidden_size": 384, "num_heads": 6},
    "B": {"depth": 12, "hidden_size": 768, "num_heads": 12},
    "L": {"depth": 24, "hidden_size": 1024, "num_heads": 16},
    "XL": {"depth": 28, "hidden_size": 1152, "num_heads": 16},
}
_PATCHES: dict[str, tuple[int, ...]] = {"T": (1, 2), "XS": (1, 2), "S": (1, 2, 4, 8), "B": (1, 2, 4, 8), "L": (1, 2, 4, 8), "XL": (1, 2, 4, 8)}

#: ``"SiT-XL/2" -> {"depth": 28, "hidden_size": 1152, "num_heads": 16, "patch_size": 2}`` etc.
#: An entry may also carry a default ``encoder_depth`` (the tiny presets use 2; otherwise 8).
SIT_PRESETS: dict[str, dict[str, int]] = {
    f"SiT-{size}/{p}": {**arch, "patch_size": p} for size, arch in TRANSFORMER_SIZES.items() for p in _PATCHES[size]
}


def preset_config(config_cls: type, presets: dict[str, dict[str, int]], family: str, name: str, *,
                  encoder_depth: int | None = None, z_dims: Sequence[int] = (), **fields: Any):
    """The validated ``config_cls`` of preset ``name``: the preset's architecture plus ``fields``.

    One home for every generator family (SiT, DiT, LightningDiT): the preset lookup, the optional
    ``encoder_depth`` override (validated once, in ``config.validate()``) and the field names.
    """
    if name not in presets:
        raise ConfigError(f"unknown {family} model {name!r}; choose one of: {', '.join(presets)}")
    arch = dict(presets[name])
    if encoder_depth is not None:
        arch["encoder_depth"] = encoder_depth
    cfg = config_cls(**{**arch, **fields}, z_dims=tuple(z_dims))  # explicit fields override the preset
    cfg.validate()
    return cfg


def sit_config(name: str, *, input_size: int, in_channels: int, **kwargs: Any) -> SiTConfig:
    """The validated :class:`SiTConfig` of preset ``name`` (keyword arguments: see :func:`build_sit`)."""
    return preset_config(SiTConfig, SIT_PRESETS, "SiT", name, input_size=input_size, in_channels=in_channels,
                         **kwargs)


def build_sit(name: str, **kwargs) -> SiT:
    """Build preset ``name`` (a key of :data:`SIT_PRESETS`) for a latent of side ``input_size``.

    Keyword arguments are those of :func:`sit_config`:
        input_size: latent side (32 for f8d4 at 256 px, 16 for f16d32).
        in_channels: latent channels (4 for f8d4, 32 for f16d32).
        num_classes: real classes; the null label is ``num_classes``.
        z_dims: target-encoder widths, one REPA projector each (e.g. ``(768,)`` for DINOv2-B).
        encoder_depth: block (1-based) whose output the projectors read; ``None`` -> the preset's
            default (8; 2 for the tiny ``SiT-T`` presets).
        class_dropout_prob: CFG label-dropout probability (0.1).
        qk_norm: QK-LayerNorm in attention (off in REPA-E).
        projector: REPA head, ``"mlp"`` (REPA) or ``"conv"`` (iREPA); ``align.projector``.
        learn_pos_embed: train the sin-cos position table (``model.learn_pos_embed``; reproduces
            the official code, whose "frozen" table is trained by accident). Default fixed.

    Raises:
        ConfigError: unknown name, ``encoder_depth`` outside ``1..depth``, or ``input_size`` not
            divisible by the patch size.
    """
    return SiT(sit_config(name, **kwargs))
