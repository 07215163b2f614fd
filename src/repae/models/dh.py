"""The DiT^DH head: a wide, shallow transformer on top of the generator's trunk (RAE, Zheng et al. 2025).

RAE (arXiv 2510.11690, sec. 5) trains diffusion transformers on wide latents (DINOv2-B: 768 channels
per token). Its theory (sec. 4.1) says the part of the network that produces the prediction must be
at least as wide as a token; widening the whole DiT costs quadratically, so DiT^DH adds a *wide,
shallow* head after the usual DiT trunk, in the design of DDT's decoder (Wang et al. 2025):

    z = Trunk(x_t | t, y)                          [B, T, D]  (the SiT / LightningDiT blocks)
    s = Linear_D->W(SiLU(z + t_emb))                 [B, T, W]  one condition per token
    h = PatchEmbed_W(x_t) + pos_W                    [B, T, W]  the noisy input, embedded again
    h = Block_W(h | s) x depth                       adaLN-Zero with per-token modulation from s
    v = FinalLayer_W(h | s)                          [B, T, p*p*C]

DiT^DH-XL (RAE sec. 5): DiT-XL trunk (28 blocks, 1152 wide) + a 2-block, 2048-wide head
with 16 heads. Blocks and final layer are the trunk family's own (SiT: LayerNorm + GELU MLP;
LightningDiT: RMSNorm + SwiGLU + 2-D RoPE for the head's head dim), so the head adds no new block
code; they take the per-token condition through :func:`repae.models.layers.modulate`.

Choices the text leaves open (ours, stated here): the condition is ``SiLU(z + t_emb)`` projected to W
(the label reaches the head through ``z``); the head has its own fixed sin-cos position table of width
W; initialisation as the trunk (xavier Linears, zero adaLN and zero output: the head outputs 0 at
step 0). In repae the head is ``model.dh_depth`` / ``model.dh_width`` / ``model.dh_heads``; REPA's
alignment reads a trunk block (``align.depth``) as before.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repae.models.layers import PatchEmbed, sincos_pos_embed_2d

__all__ = ["DHHead"]


class DHHead(nn.Module):
    """DiT^DH's wide shallow head (module docstring).

    Args (keyword-only):
        in_channels: latent channels C (the head embeds ``x_t`` again).
        out_channels: predicted channels (C for a velocity).
        patch_size: the trunk's patch size p (same token grid as the trunk).
        input_size: latent side h = w.
        trunk_size: trunk width D.
        hidden_size: head width W (2048 in DiT^DH-XL).
        num_heads: attention heads of the head blocks (16).
        depth: head blocks (2).
        block: ``block(hidden_size, num_heads) -> module`` with ``forward(x, c[, rope])``: the family's block.
        final: ``final(hidden_size) -> module`` with ``forward(x, c)``: the family's final layer.
        rope: a rotary embedding for the head's head dim (LightningDiT), passed to every block, or None.
    """

    def __init__(self, *, in_channels: int, out_channels: int, patch_size: int, input_size: int, trunk_size: int,
                 hidden_size: int, num_heads: int, depth: int, block: Callable[[int, int], nn.Module],
                 final: Callable[[int], nn.Module], rope: nn.Module | None = None):
        super().__init__()
        self.grid = input_size // patch_size
        W = hidden_size
        self.x_embedder = PatchEmbed(patch_size=patch_size, in_channels=in_channels, hidden_size=W)
        self.s_projector = nn.Linear(trunk_size, W, bias=True) if trunk_size != W else nn.Identity()
        self.register_buffer("pos_embed", torch.zeros(1, self.grid * self.grid, W), persistent=True)  # [1, T, W]
        self.rope = rope
        self.blocks = nn.ModuleList(block(W, num_heads) for _ in range(depth))
        self.final_layer = final(W)
        self.out_channels = out_channels

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """After the trunk's xavier pass over every Linear: the position table, the patch conv as the
        trunk's, zero adaLN in every block and a zero final layer (the head outputs 0 at first)."""
        self.pos_embed.copy_(sincos_pos_embed_2d(self.pos_embed.shape[-1], self.grid,
                                                 device=self.pos_embed.device).unsqueeze(0))  # [1, T, W]
        w = self.x_embedder.proj.weight  # [W, C, p, p]
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for m in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x_t: Tensor, z: Tensor, t_emb: Tensor) -> Tensor:
        """``x_t`` [B, C, h, w], trunk tokens ``z`` [B, T, D], time embedding ``t_emb`` [B, D] -> [B, T, p*p*C]."""
        s = self.s_projector(F.silu(z + t_emb.unsqueeze(1)))  # [B, T, W] per-token condition
        x = self.x_embedder(x_t) + self.pos_embed  # [B, T, W]
        extra = () if self.rope is None else (self.rope,)
        for block in self.blocks:
            x = block(x, s, *extra)  # [B, T, W]
        return self.final_layer(x, s)  # [B, T, p*p*C]
