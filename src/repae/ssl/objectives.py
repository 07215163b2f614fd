"""Self-supervised objectives for the project's encoders: MAE, DINO (+ iBOT patch term), SimCLR.

Both wrap a timm ``VisionTransformer`` backbone and expose one interface:
``objective.loss(x, g) -> Tensor`` on a float ``[-1, 1]`` batch ``[B, 3, 32, 32]`` with an explicit
``torch.Generator`` for every random draw, and ``objective.after_step(progress)`` for per-step
bookkeeping (the DINO teacher EMA). Only ``objective.backbone`` is exported as the encoder.

* ``MAE`` -- masked autoencoder (He et al. 2022): 75 % of patches dropped, the encoder sees the
  rest, a light decoder reconstructs per-patch-normalised pixels of the masked patches (their
  eq. for ``norm_pix_loss``). Cheap: the encoder runs on 17 of 65 tokens.
* ``DINO`` -- self-distillation with no labels (Caron et al. 2021): a student matches an EMA
  teacher's centred, sharpened softmax over K prototypes, across 2 global (32x32) and several
  local (16x16) crops (multi-crop, their eq. 1 and Sec. 3.1). With ``patch_weight > 0`` the
  student's global views are also patch-masked and each masked patch token must match the
  teacher's patch token of the unmasked view (iBOT, Zhou et al. 2022, masked image modelling
  with an online tokenizer): this is what makes the *patch* tokens semantic, which is what
  REPA aligns to.
* ``SimCLR`` -- contrastive learning of two augmented views (Chen et al. 2020) on any backbone
  that returns tokens; the objective of ``repae-cnn-p4`` (:mod:`repae.encoders.convnet`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import Block, VisionTransformer

from repae.ssl.augment import augment_view

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def sincos_pos_embed_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding ``[grid*grid, dim]`` (MAE decoder, Vaswani et al.)."""
    assert dim % 4 == 0, "sincos embedding needs dim divisible by 4"
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # [dim/4]
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                            indexing="ij")
    out = []
    for pos in (ys.flatten(), xs.flatten()):
        angles = pos[:, None] * omega[None]  # [N, dim/4]
        out += [torch.sin(angles), torch.cos(angles)]
    return torch.cat(out, dim=1).float()  # [N, dim]


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, N, p*p*C]`` in row-major patch order (matches timm's patch_embed)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)  # [B, C, h, p, w, p]
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def _embed_patches(vit: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """patch_embed output flattened to ``[B, N, D]`` whatever ``dynamic_img_size`` is."""
    t = vit.patch_embed(x)
    return t.flatten(1, 2) if t.ndim == 4 else t  # [B, N, D]


def _add_pos(vit: VisionTransformer, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Prepend CLS and add (resampled) position embeddings: ``[B, N, D]`` -> ``[B, 1+N, D]``."""
    b, n, d = tokens.shape
    if vit.dynamic_img_size:
        return vit._pos_embed(tokens.view(b, grid[0], grid[1], d))
    return vit._pos_embed(tokens)


def _run_blocks(vit: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    return vit.norm(vit.blocks(vit.norm_pre(x)))  # [B, T, D]


# --------------------------------------------------------------------------------------------
# MAE
# --------------------------------------------------------------------------------------------


@dataclass
class MAEConfig:
    mask_ratio: float = 0.75              # MAE default
    decoder_dim: int = 128                # light decoder (MAE ablation: a narrow decoder suffices)
    decoder_depth: int = 2
    decoder_heads: int = 4
    norm_pix_loss: bool = True            # per-patch normalised targets (MAE Sec. 4 / Table 1d)
    crop_scale: tuple[float, float] = (0.5, 1.0)


class MAE(nn.Module):
    """Masked autoencoder around a ViT backbone (encoder = the exported backbone)."""

    def __init__(self, backbone: VisionTransformer, cfg: MAEConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or MAEConfig()
        self.backbone = backbone
        d, p = backbone.embed_dim, backbone.patch_embed.patch_size[0]
        self.grid = backbone.patch_embed.grid_size[0]
        self.patch = p
        self.dec_embed = nn.Linear(d, cfg.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_dim))
        self.register_buffer("dec_pos", sincos_pos_embed_2d(cfg.decoder_dim, self.grid)[None], persistent=False)
        self.dec_blocks = nn.Sequential(*[Block(cfg.decoder_dim, cfg.decoder_heads, mlp_ratio=4.0)
                                          for _ in range(cfg.decoder_depth)])
        self.dec_norm = nn.LayerNorm(cfg.decoder_dim)
        self.dec_pred = nn.Linear(cfg.decoder_dim, p * p * backbone.patch_embed.proj.in_channels)
        nn.init.normal_(self.mask_token, std=0.02)

    def loss(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """MSE on masked patches of one augmented view (MAE eq. in Sec. 3, 'Reconstruction target')."""
        cfg, vit = self.cfg, self.backbone
        x = augment_view(x, size=x.shape[-1], scale=cfg.crop_scale, g=g, brightness=0.1, contrast=0.1)
        b = x.shape[0]
        tokens = _embed_patches(vit, x)  # [B, N, D]
        n = tokens.shape[1]
        keep = int(round(n * (1 - cfg.mask_ratio)))
        order = torch.argsort(torch.rand(b, n, generator=g), dim=1).to(x.device)  # [B, N] random permutation
        visible = order[:, :keep]  # [B, K]
        with_pos = _add_pos(vit, tokens, (self.grid, self.grid))  # [B, 1+N, D]
        cls, patches = with_pos[:, :1], with_pos[:, 1:]
        kept = torch.gather(patches, 1, visible[..., None].expand(-1, -1, patches.shape[-1]))  # [B, K, D]
        latent = _run_blocks(vit, torch.cat([cls, kept], dim=1))  # [B, 1+K, D]

        dec = self.dec_embed(latent)  # [B, 1+K, Dd]
        full = self.mask_token.expand(b, n, -1).clone()  # [B, N, Dd]
        full.scatter_(1, visible[..., None].expand(-1, -1, full.shape[-1]), dec[:, 1:])
        full = full + self.dec_pos  # [B, N, Dd]
        pred = self.dec_pred(self.dec_norm(self.dec_blocks(torch.cat([dec[:, :1], full], dim=1))))[:, 1:]  # [B, N, P]

        target = patchify(x, self.patch)  # [B, N, P]
        if cfg.norm_pix_loss:
            mu, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mu) / (var + 1e-6).sqrt()
        masked = torch.ones(b, n, device=x.device)
        masked.scatter_(1, visible, 0.0)  # [B, N] 1 = masked
        per_patch = ((pred - target) ** 2).mean(-1)  # [B, N]
        return (per_patch * masked).sum() / masked.sum()

    def after_step(self, progress: float) -> None:
        pass


# --------------------------------------------------------------------------------------------
# DINO (+ iBOT masked patch distillation)
# --------------------------------------------------------------------------------------------


@dataclass
class DINOConfig:
    out_dim: int = 1024                   # prototypes K (small data -> fewer than DINO's 65536)
    hidden_dim: int = 512
    bottleneck_dim: int = 128
    student_temp: float = 0.1             # DINO defaults
    teacher_temp: float = 0.04
    center_momentum: float = 0.9
    ema_start: float = 0.99               # teacher EMA momentum, cosine -> 1 (DINO uses 0.996 for long runs)
    n_local: int = 4                      # local crops
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.1, 0.4)
    local_size: int = 16
    patch_weight: float = 1.0             # iBOT masked-patch term (0 disables)
    mask_ratio: tuple[float, float] = (0.1, 0.5)  # iBOT per-image mask ratio range


class DINOHead(nn.Module):
    """3-layer MLP -> L2-normalised bottleneck -> weight-normalised prototypes (g fixed to 1)."""

    def __init__(self, in_dim: int, cfg: DINOConfig):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, cfg.hidden_dim), nn.GELU(), nn.Linear(cfg.hidden_dim, cfg.hidden_dim),
                                 nn.GELU(), nn.Linear(cfg.hidden_dim, cfg.bottleneck_dim))
        self.prototypes = nn.Parameter(torch.randn(cfg.out_dim, cfg.bottleneck_dim) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.mlp(x), dim=-1)  # [..., bottleneck]
        return z @ F.normalize(self.prototypes, dim=-1).t()  # [..., K]


class DINO(nn.Module):
    """Student/teacher self-distillation; ``backbone`` is the student (the exported encoder)."""

    def __init__(self, backbone: VisionTransformer, cfg: DINOConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or DINOConfig()
        self.backbone = backbone
        self.head = DINOHead(backbone.embed_dim, cfg)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, backbone.embed_dim))
        self.teacher = _frozen_copy(backbone)
        self.teacher_head = _frozen_copy(self.head)
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))
        self.register_buffer("patch_center", torch.zeros(1, 1, cfg.out_dim))
        self._momentum = cfg.ema_start

    def _student_tokens(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        vit = self.backbone
        tokens = _embed_patches(vit, x)  # [B, N, D]
        if mask is not None:
            tokens = torch.where(mask[..., None], self.mask_token.to(tokens.dtype), tokens)
        side = int(math.isqrt(tokens.shape[1]))
        return _run_blocks(vit, _add_pos(vit, tokens, (side, side)))  # [B, 1+N, D]

    def _masks(self, b: int, n: int, g: torch.Generator) -> torch.Tensor:
        """Random patch masks with a per-image ratio drawn from ``mask_ratio`` -> bool ``[B, N]``."""
        lo, hi = self.cfg.mask_ratio
        ratio = lo + (hi - lo) * torch.rand(b, 1, generator=g)
        return torch.rand(b, n, generator=g) < ratio

    def loss(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        cfg = self.cfg
        b = x.shape[0]
        size = x.shape[-1]
        globals_ = [augment_view(x, size=size, scale=cfg.global_scale, g=g) for _ in range(2)]
        locals_ = [augment_view(x, size=cfg.local_size, scale=cfg.local_scale, g=g) for _ in range(cfg.n_local)]

        with torch.no_grad():
            t_tok = self.teacher.forward_features(torch.cat(globals_))  # [2B, 1+N, D]
            t_out = self.teacher_head(t_tok)  # [2B, 1+N, K]
            t_cls = F.softmax((t_out[:, 0] - self.center) / cfg.teacher_temp, dim=-1).chunk(2)  # 2 x [B, K]
            t_patch = F.softmax((t_out[:, 1:] - self.patch_center) / cfg.teacher_temp, dim=-1).chunk(2)  # [B, N, K]

        n = t_tok.shape[1] - 1
        masks = self._masks(2 * b, n, g).to(x.device) if cfg.patch_weight > 0 else None  # [2B, N]
        s_glob = self._student_tokens(torch.cat(globals_), masks)  # [2B, 1+N, D]
        s_glob_out = self.head(s_glob if masks is not None else s_glob[:, :1]) / cfg.student_temp
        s_cls = [s_glob_out[:, 0].chunk(2)[0], s_glob_out[:, 0].chunk(2)[1]]
        if locals_:
            s_loc = self.backbone.forward_features(torch.cat(locals_))[:, 0]  # [nL*B, D]
            s_cls += list((self.head(s_loc) / cfg.student_temp).chunk(cfg.n_local))

        # DINO eq. 1: sum over teacher global views t and student views s != t
        terms = [-(t_cls[i] * F.log_softmax(s, dim=-1)).sum(-1).mean()
                 for i in range(2) for j, s in enumerate(s_cls) if j != i]
        loss = torch.stack(terms).mean()

        if masks is not None:
            # iBOT: masked student patch tokens predict the teacher's patch tokens of the same view
            s_patch = F.log_softmax(s_glob_out[:, 1:], dim=-1)  # [2B, N, K]
            ce = -(torch.cat(t_patch) * s_patch).sum(-1)  # [2B, N]
            m = masks.float()
            patch_loss = ((ce * m).sum(1) / m.sum(1).clamp(min=1)).mean()
            loss = loss + cfg.patch_weight * patch_loss

        with torch.no_grad():  # centre update (DINO Sec. 3.1, eq. 4)
            cm = cfg.center_momentum
            self.center.mul_(cm).add_(t_out[:, 0].mean(0, keepdim=True), alpha=1 - cm)
            self.patch_center.mul_(cm).add_(t_out[:, 1:].mean((0, 1), keepdim=True), alpha=1 - cm)
        return loss

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """Teacher EMA with the cosine momentum schedule ``1 - (1 - m0) (cos(pi p) + 1) / 2``."""
        m = 1 - (1 - self.cfg.ema_start) * (math.cos(math.pi * progress) + 1) / 2
        for src, dst in ((self.backbone, self.teacher), (self.head, self.teacher_head)):
            for ps, pt in zip(src.parameters(), dst.parameters()):
                pt.mul_(m).add_(ps.detach(), alpha=1 - m)


def _frozen_copy(module: nn.Module) -> nn.Module:
    import copy

    clone = copy.deepcopy(module)
    clone.requires_grad_(False)
    return clone


# --------------------------------------------------------------------------------------------
# SimCLR (contrastive, any backbone that returns tokens)
# --------------------------------------------------------------------------------------------


@dataclass
class SimCLRConfig:
    temperature: float = 0.2              # tau of NT-Xent (SimCLR Table 5: 0.1-0.5 work; 0.2 probed best here)
    proj_hidden: int = 512                # projection MLP g(.) (SimCLR Sec. 2.1: 2 layers, ReLU)
    proj_dim: int = 128
    crop_scale: tuple[float, float] = (0.3, 1.0)  # random resized crop area fraction
    brightness: float = 0.2
    contrast: float = 0.3


class SimCLR(nn.Module):
    """SimCLR (Chen et al. 2020): two augmented views of each image attract, all other views repel.

    The representation is the backbone's tokens mean-pooled over positions (what the linear probe
    reads); the projection head ``g`` only exists during pretraining (their Sec. 4.2: the layer
    before ``g`` is the better representation). Loss: NT-Xent over ``2B`` views (their eq. 1),
    computed in fp32 even under bf16 autocast.
    """

    def __init__(self, backbone: nn.Module, cfg: SimCLRConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or SimCLRConfig()
        self.backbone = backbone
        dim = int(backbone.embed_dim)
        self.head = nn.Sequential(nn.Linear(dim, cfg.proj_hidden), nn.BatchNorm1d(cfg.proj_hidden), nn.ReLU(inplace=True),
                                  nn.Linear(cfg.proj_hidden, cfg.proj_dim))

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.backbone, VisionTransformer):
            return self.backbone.forward_features(x)[:, self.backbone.num_prefix_tokens:]  # [B, N, D]
        return self.backbone(x)  # [B, N, D]

    def loss(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        cfg, b = self.cfg, x.shape[0]
        views = torch.cat([augment_view(x, size=x.shape[-1], scale=cfg.crop_scale, g=g, brightness=cfg.brightness,
                                        contrast=cfg.contrast) for _ in range(2)])  # [2B, 3, H, W]
        z = F.normalize(self.head(self._tokens(views).mean(1)).float(), dim=1)  # [2B, P]
        logits = z @ z.t() / cfg.temperature  # [2B, 2B]
        logits = logits.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=x.device), float("-inf"))
        positives = torch.arange(2 * b, device=x.device).roll(b)  # view i pairs with i +- B
        return F.cross_entropy(logits, positives)

    def after_step(self, progress: float) -> None:
        pass


# objective name -> (class, config class). One table; no if/elif over names.
OBJECTIVES: dict[str, tuple[type, type]] = {"mae": (MAE, MAEConfig), "dino": (DINO, DINOConfig),
                                            "simclr": (SimCLR, SimCLRConfig)}
# objectives that need a ViT backbone (they mask or drop patch tokens)
VIT_ONLY = frozenset({"mae", "dino"})
