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
==================  =========  ==========  =====  =========  =========  ==========  =========

"no-normalizer" keeps the normaliser at its initial statistics for the whole run (a fixed
per-channel affine map, like SD-VAE's constant 0.18215), which is how the paper's "w/o
batch-norm" row replaces the BN layer. "e2e-diffusion" is the naive end-to-end baseline of the
paper's Table 1: the diffusion loss is back-propagated into the VAE and there is no separate
alignment pass through a frozen SiT.
"""

from __future__ import annotations

from dataclasses import dataclass

from repae.errors import ConfigError


@dataclass(frozen=True)
class Recipe:
    train_vae: bool  # the VAE has an optimizer and is updated
    vae_align: bool  # VAE phase adds lambda_v * REPA through the frozen SiT
    l_reg: bool  # VAE phase adds L_REG (L1 + perceptual + KL + GAN) and a discriminator is trained
    sit_align: bool  # SiT phase adds lambda_g * REPA
    stop_grad: bool  # the SiT phase sees z.detach() (False: diffusion loss reaches the VAE)
    update_normalizer: bool  # latent BatchNorm uses batch statistics and updates running ones
    vae_random_init: bool = False  # ignore tokenizer.weights and start the VAE from scratch
    cached_latents: bool = False  # read posterior mean/std from `repae cache-latents` output


RECIPES: dict[str, Recipe] = {
    "repa-e": Recipe(True, True, True, True, True, True),
    "repa": Recipe(False, False, False, True, True, False),
    "vanilla": Recipe(False, False, False, False, True, False),
    "e2e-diffusion": Recipe(True, False, True, True, False, True),
    "no-stopgrad": Recipe(True, True, True, True, False, True),
    "no-normalizer": Recipe(True, True, True, True, True, False),
    "no-lreg": Recipe(True, True, False, True, True, True),
    "vae-scratch": Recipe(True, True, True, True, True, True, vae_random_init=True),
    "ldm": Recipe(False, False, False, True, True, False, cached_latents=True),
}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(f"unknown recipe '{name}'; choose one of: {', '.join(RECIPES)}") from None
