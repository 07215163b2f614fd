"""Training recipes: REPA-E, its baselines and the paper's ablations as rows of one table.

Every recipe is the same trainer with different gradient routing (REPA-E, Leng et al. 2025,
sections 3-4 and Table 6 of the paper; spec-repae.md sections 1.3 and 11):

==================  =========  ==========  =====  =========  =========  ==========  =========
recipe              train VAE  VAE-align   L_REG  SiT-align  stop-grad  BN updates  VAE init
==================  =========  ==========  =====  =========  =========  ==========  =========
repa-e              yes        1.5 REPA    yes    0.5 REPA   yes        yes         weights
repa                no         -           -      0.5 REPA   (frozen)   no          weights
vanilla             no         -           -      -          (frozen)   no          weights
e2e-diffusion       yes        -           yes    0.5 REPA   NO         yes         weights
no-stopgrad         yes        1.5 REPA    yes    0.5 REPA   NO         yes         weights
no-normalizer       yes        1.5 REPA    yes    0.5 REPA   yes        frozen      weights
no-lreg             yes        1.5 REPA    no     0.5 REPA   yes        yes         weights
vae-scratch         yes        1.5 REPA    yes    0.5 REPA   yes        yes         random
ldm                 no         -           -      0.5 REPA   (frozen)   no          cached
vae                 yes        -           yes    (no SiT)   -          stats only  weights
rae-decoder         decoder    -           yes    (no SiT)   -          no          weights
==================  =========  ==========  =====  =========  =========  ==========  =========

"no-normalizer" keeps the normaliser at its initial statistics for the whole run (a fixed
per-channel affine map, like SD-VAE's constant 0.18215), which is how the paper's "w/o
batch-norm" row replaces the BN layer. "e2e-diffusion" is the naive end-to-end baseline of the
paper's Table 1: the diffusion loss is back-propagated into the VAE and there is no separate
alignment pass through a frozen SiT. "vae" builds no SiT: it trains or fine-tunes the tokenizer
alone (from ``tokenizer.weights``, or from scratch when unset) with L_REG plus any of the SE /
EQ-VAE / VF regularisers (``tokreg.*``, docs/tokenizer-regularisers.md). "rae-decoder" trains the
ViT decoder of a representation autoencoder (``tokenizer.preset=rae``, RAE, Zheng et al. 2025) on its
FROZEN encoder with L1 + perceptual + GAN (L_REG with ``lreg.kl_weight=0``) and noise-augmented
latents; its latent statistics are computed once from clean latents and never move (the encoder does
not change). A generator trains on an RAE's latents with ``ldm``, ``repa`` or ``vanilla`` (tokenizer
frozen); the recipes that train the VAE end to end do not apply to an RAE (its encoder is frozen).
"""

from __future__ import annotations

from dataclasses import dataclass

from repae.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class Recipe:
    train_vae: bool  # the VAE has an optimizer and is updated
    vae_align: bool  # VAE phase adds lambda_v * REPA through the frozen SiT
    l_reg: bool  # VAE phase adds L_REG (L1 + perceptual + KL + GAN) and a discriminator is trained
    sit_align: bool  # SiT phase adds lambda_g * REPA
    stop_grad: bool  # the SiT phase sees z.detach() (False: diffusion loss reaches the VAE)
    update_normalizer: bool  # latent BatchNorm uses batch statistics and updates running ones
    vae_random_init: bool = False  # ignore tokenizer.weights and start the VAE from scratch
    cached_latents: bool = False  # read posterior mean/std from `repae cache-latents` output
    build_sit: bool = True  # False: no SiT at all, only the tokenizer (+ discriminator) trains (`vae`)


RECIPES: dict[str, Recipe] = {
    "repa-e": Recipe(train_vae=True, vae_align=True, l_reg=True,
                     sit_align=True, stop_grad=True, update_normalizer=True),
    "repa": Recipe(train_vae=False, vae_align=False, l_reg=False,
                   sit_align=True, stop_grad=True, update_normalizer=False),
    "vanilla": Recipe(train_vae=False, vae_align=False, l_reg=False,
                      sit_align=False, stop_grad=True, update_normalizer=False),
    "e2e-diffusion": Recipe(train_vae=True, vae_align=False, l_reg=True,
                            sit_align=True, stop_grad=False, update_normalizer=True),
    "no-stopgrad": Recipe(train_vae=True, vae_align=True, l_reg=True,
                          sit_align=True, stop_grad=False, update_normalizer=True),
    "no-normalizer": Recipe(train_vae=True, vae_align=True, l_reg=True,
                            sit_align=True, stop_grad=True, update_normalizer=False),
    "no-lreg": Recipe(train_vae=True, vae_align=True, l_reg=False,
                      sit_align=True, stop_grad=True, update_normalizer=True),
    "vae-scratch": Recipe(train_vae=True, vae_align=True, l_reg=True,
                          sit_align=True, stop_grad=True, update_normalizer=True, vae_random_init=True),
    "ldm": Recipe(train_vae=False, vae_align=False, l_reg=False,
                  sit_align=True, stop_grad=True, update_normalizer=False, cached_latents=True),
    # tokenizer only: L_REG + the regularisers of repae.losses.tokenizer_reg; the normaliser tracks
    # the latent's batch statistics so export-vae writes current ones
    "vae": Recipe(train_vae=True, vae_align=False, l_reg=True, sit_align=False, stop_grad=True,
                  update_normalizer=True, build_sit=False),
    # RAE decoder only (tokenizer.preset=rae): the encoder is frozen, the decoder is the tokenizer's only
    # trained part; the statistics stay those of the clean latents
    "rae-decoder": Recipe(train_vae=True, vae_align=False, l_reg=True, sit_align=False, stop_grad=True,
                          update_normalizer=False, build_sit=False),
}

#: The recipes a generator trains with on an RAE's latents (the tokenizer frozen), besides ``rae-decoder``.
RAE_GENERATOR_RECIPES = ("ldm", "repa", "vanilla")


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(f"unknown recipe '{name}'; choose one of: {', '.join(RECIPES)}") from None
