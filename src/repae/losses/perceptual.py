"""Perceptual distances for the VAE regularisation loss L_REG (spec-repae.md section 4.5).

Every entry of :data:`PERCEPTUAL` maps two image batches ``[B, 3, H, W]`` (VAE range ``[-1, 1]``)
to a per-sample distance ``[B]``. The modules are frozen, always in eval mode and run in float32
with autocast disabled; gradients flow to the inputs only.

``"lpips"``
    LPIPS-VGG (Zhang et al. 2018, v0.1 linear heads) exactly as REPA-E uses it: the torchvision
    VGG16 ``features`` backbone loaded from a LOCAL file the user names (``vgg16-397923af.pth``;
    nothing is downloaded) and the five 1x1 heads loaded from the ``lpips`` wheel
    (``lpips/weights/v0.1/vgg.pth``). Reproduces REPA-E's ``2u - 1`` input remapping quirk by default.
``"laplacian"``
    A weight-free Laplacian-pyramid L1 distance (Lap1 of Bojanowski et al. 2018, "Optimizing the
    Latent Space of Generative Networks", section 3.2). The option for the embedded default config
    and for tests: it needs no weights and still emphasises band-pass detail errors that a plain
    pixel L1 under-weights.
``"none"``
    Zero distance (perceptual term off).

Usage::

    perc = build_perceptual("lpips", vgg_weights="~/weights/vgg16-397923af.pth")
    d = perc(x, x_hat)        # [B]
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from repae.errors import ConfigError, MissingWeightsError
from repae.interop.io import check_state_dict, is_state_dict, read_weights, strip_wrappers, unwrap_entries

VGG16_FILENAME = "vgg16-397923af.pth"
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
#: the files a hub repository given as the VGG16 weights may hold (the first one present is read)
VGG16_HUB_FILES = (VGG16_FILENAME, "model.safetensors", "pytorch_model.bin")
VGG16_ENV = "REPAE_VGG16_WEIGHTS"

# LPIPS "ScalingLayer" constants (spec 4.5): u -> (u - shift) / scale, per RGB channel.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
# VGG16 `features` slice ends (exclusive) at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (spec 4.5).
LPIPS_SLICE_ENDS = (4, 9, 16, 23, 30)
LPIPS_CHANNELS = (64, 128, 256, 512, 512)
LPIPS_EPS = 1e-10


class _Frozen(nn.Module):
    """Base for perceptual modules: parameters frozen, eval mode whatever the parent's mode."""

    def _freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> _Frozen:  # noqa: ARG002 - deliberately ignored
        # Frozen metric networks never switch to train mode (the REPA-E loss module is always in
        # train mode for its discriminator; LPIPS is forced to eval in every call, spec 4.5).
        return super().train(False)


# ---------------------------------------------------------------------------------------------
# Weight loading
# ---------------------------------------------------------------------------------------------


def _missing_vgg(path: str | os.PathLike | None) -> MissingWeightsError:
    where = f" at {path}" if path is not None else ""
    return MissingWeightsError(
        f"VGG16 ImageNet weights for LPIPS ({VGG16_FILENAME}) not found{where}",
        f"download {VGG16_URL} and set lreg.vgg_weights=PATH (repae evaluate: --lpips-vgg-weights; or env "
        f"{VGG16_ENV}=PATH), or use lreg.perceptual=laplacian which needs no weights",
    )


def resolve_vgg_weights(vgg_weights: str | os.PathLike | None) -> Path:
    """Return the local VGG16 file: the argument, else ``$REPAE_VGG16_WEIGHTS``; never downloads.

    A Hugging Face hub id (``owner/name``: the first of :data:`VGG16_HUB_FILES` in its cached snapshot;
    ``owner/name/file.pth``: that file) is read from the local hub cache (:mod:`repae.interop.hub`).

    Raises:
        MissingWeightsError: nothing named, the named file does not exist, or a hub id is not cached.
    """
    from repae.interop.hub import resolve_weights_file

    named = vgg_weights if vgg_weights is not None else os.environ.get(VGG16_ENV) or None
    if named is None:
        raise _missing_vgg(None)
    named = resolve_weights_file(named, VGG16_HUB_FILES, f"VGG16 ImageNet weights for LPIPS ({VGG16_FILENAME})")
    path = Path(named).expanduser()
    if not path.is_file():
        raise _missing_vgg(path)
    return path


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a flat tensor dict from ``.safetensors`` or a torch file (weights only, on CPU)."""
    fix = f"pass a torchvision VGG16 file ({VGG16_FILENAME})"
    sd = unwrap_entries(read_weights(path, what="VGG16 weights file", fix=fix), ("state_dict", "model"), levels=2)
    if not is_state_dict(sd):
        raise ConfigError(f"{path} does not hold a state dict; {fix}")
    return dict(sd)


def vgg16_features_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep the ``features`` part of a torchvision VGG16 state dict, keyed like ``vgg16().features``.

    Accepts the full torchvision layout (``features.0.weight``, ..., ``classifier.*`` ignored) or a
    features-only dict (``0.weight``, ...); a ``module.`` prefix (DDP) is stripped.
    """
    sd = strip_wrappers(sd)
    if any(k.startswith("features.") for k in sd):
        return {k.removeprefix("features."): v for k, v in sd.items() if k.startswith("features.")}
    return dict(sd)


def build_vgg16_features(vgg_weights: str | os.PathLike | None) -> nn.Sequential:
    """torchvision ``vgg16(weights=None).features`` with weights from a local file (strict load)."""
    import torchvision

    path = resolve_vgg_weights(vgg_weights)
    sd = vgg16_features_state_dict(_load_state_dict(path))
    # Build on the meta device so the 120M-parameter classifier is never allocated or initialised;
    # every features tensor is then set by the strict load below (features has no buffers).
    with torch.device("meta"):
        features = torchvision.models.vgg16(weights=None).features
    features = features.to_empty(device="cpu")
    check_state_dict(sd, features.state_dict(), what=f"{path} is not a torchvision VGG16 state dict",
                     hint=f"; pass {VGG16_FILENAME} or a file holding its features.* tensors")
    features.load_state_dict(sd, strict=True)
    return features


def lpips_heads_path() -> Path:
    """Path of the LPIPS v0.1 VGG linear heads shipped inside the ``lpips`` wheel (7,289 bytes)."""
    try:
        path = Path(str(importlib.resources.files("lpips") / "weights" / "v0.1" / "vgg.pth"))
    except ModuleNotFoundError as err:  # pragma: no cover - lpips is a hard dependency
        what = "LPIPS linear heads (lpips/weights/v0.1/vgg.pth)"
        raise MissingWeightsError(what, "pip install lpips==0.1.4") from err
    if not path.is_file():  # pragma: no cover
        raise MissingWeightsError(f"LPIPS linear heads not found at {path}", "reinstall lpips==0.1.4")
    return path


def load_lpips_heads(path: str | os.PathLike | None = None) -> list[torch.Tensor]:
    """The five head weights ``[1, C_k, 1, 1]`` (keys ``lin{k}.model.1.weight``) as a list."""
    path = Path(path) if path is not None else lpips_heads_path()
    if not path.is_file():
        raise MissingWeightsError(f"LPIPS linear heads not found at {path}", "pass the lpips v0.1 vgg.pth file")
    sd = read_weights(path, what="LPIPS heads file", fix="pass the lpips v0.1 vgg.pth file")
    if not isinstance(sd, dict):
        raise ConfigError(f"{path} is not an LPIPS v0.1 VGG heads file (it holds a {type(sd).__name__}); pass the lpips "
                          "v0.1 vgg.pth file")
    heads = []
    for k, c in enumerate(LPIPS_CHANNELS):
        w = sd.get(f"lin{k}.model.1.weight")
        if w is None or tuple(w.shape) != (1, c, 1, 1):
            raise ConfigError(f"{path} is not an LPIPS v0.1 VGG heads file (lin{k}.model.1.weight [1,{c},1,1]); pass "
                              "the lpips v0.1 vgg.pth file")
        heads.append(w.float())
    return heads


# ---------------------------------------------------------------------------------------------
# LPIPS-VGG
# ---------------------------------------------------------------------------------------------


class LPIPS(_Frozen):
    """LPIPS-VGG distance (Zhang et al. 2018, v0.1), the perceptual term of REPA-E (spec 4.5).

    ``d(a, b) = sum_k mean_{h,w} w_k . (n(f_k(a)) - n(f_k(b)))^2`` where ``f_k`` are the VGG16
    slices ending at relu1_2 .. relu5_3, ``n`` unit-normalises along channels
    (``u / (sqrt(sum_c u^2) + 1e-10)``) and ``w_k`` are the 1x1 heads (no bias, dropout off).

    Args:
        features: VGG16 ``features`` (at least the first 30 layers), already loaded.
        heads: five tensors ``[1, C_k, 1, 1]``.
        remap_inputs: apply ``u -> 2u - 1`` before the scaling layer (default ``True``). REPA-E's
            LPIPS assumes ``[0, 1]`` inputs and remaps them, but it is fed ``[-1, 1]`` images, so
            the tensors entering VGG lie in ``[-3, 1]``. The published models were trained with
            this quirk (spec 4.5 / 11.10), so it is the default here; ``False`` gives standard
            LPIPS on ``[-1, 1]`` inputs (use that for evaluation metrics).
    """

    def __init__(self, *, features: nn.Sequential, heads: list[torch.Tensor], remap_inputs: bool = True):
        super().__init__()
        self.features = features
        self.heads = nn.ParameterList([nn.Parameter(w.detach().clone().float()) for w in heads])
        self.remap_inputs = remap_inputs
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self._freeze()

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Channel-unit-normalised VGG features of the five slices for scaled inputs ``[n, 3, H, W]``."""
        outs, start = [], 0
        for end in LPIPS_SLICE_ENDS:
            for layer in self.features[start:end]:
                x = layer(x)
            outs.append(x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + LPIPS_EPS))  # [n, C_k, H_k, W_k]
            start = end
        return outs

    def _scaled(self, u: torch.Tensor) -> torch.Tensor:
        u = u.float()
        if self.remap_inputs:
            u = 2 * u - 1  # REPA-E quirk: [-1, 1] -> [-3, 1] (see class docstring)
        return (u - self.shift) / self.scale  # [n, 3, H, W]

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-sample LPIPS distance ``[B]`` between ``a`` and ``b`` ``[B, 3, H, W]``.

        In training one side (the real image) needs no gradient. It then gets its own VGG pass
        under ``no_grad``: a joint ``[2B]`` pass would keep that half's activations for the backward
        and compute its input gradient there for nothing. That is half the VGG16 backward of a
        REPA-E step, and the activations of B images at every layer. Without gradients both sides
        share one ``[2B]`` pass.
        """
        with torch.autocast(device_type=a.device.type, enabled=False):
            grads = torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)
            if grads and not (a.requires_grad and b.requires_grad):
                pair = []
                for u in (a, b):
                    with torch.set_grad_enabled(u.requires_grad):
                        pair.append(self._features(self._scaled(u)))
                feats_a, feats_b = pair
            else:
                joint = self._features(torch.cat([self._scaled(a), self._scaled(b)]))  # one [2B] pass
                feats_a, feats_b = zip(*(f.chunk(2) for f in joint))
            total = a.new_zeros(a.shape[0], dtype=torch.float32)
            for fa, fb, w in zip(feats_a, feats_b, self.heads):
                diff = (fa - fb).pow(2)  # [B, C, h, w]
                total = total + F.conv2d(diff, w).mean(dim=(1, 2, 3))  # head then spatial mean -> [B]
            return total


# ---------------------------------------------------------------------------------------------
# Laplacian-pyramid L1 (Lap1)
# ---------------------------------------------------------------------------------------------


class LaplacianPyramidL1(_Frozen):
    """Weight-free Lap1 distance (Bojanowski et al. 2018, "Optimizing the Latent Space of Generative
    Networks", section 3.2): ``Lap1(x, x') = sum_j 2^(-2j) |L^j(x) - L^j(x')|_1``.

    ``L^j`` is level ``j`` of a Laplacian pyramid (Burt & Adelson): ``G_0 = x``,
    ``G_{j+1} = down(blur(G_j))``, ``L^j = G_j - up(G_{j+1})`` for ``j < J - 1`` and
    ``L^{J-1} = G_{J-1}`` (low-pass residual). ``blur`` is the separable 5-tap binomial
    ``[1, 4, 6, 4, 1] / 16`` with replicate padding (preserves constants), ``down`` keeps every
    second pixel and ``up`` is bilinear resizing back to ``G_j``'s size (the pyramid stays exactly
    invertible whatever ``up`` is, since ``L^j`` is defined as the difference).

    Normalisation (ours): the paper's ``|.|_1`` sums over pixels; we keep those level weights and
    sums and divide the total by ``C * H * W`` of the input, so a 1-level pyramid equals the mean
    absolute error and values do not grow with resolution. Because level ``j`` has ``4^-j`` of the
    pixels and weight ``2^(-2j)``, the finest band-pass level dominates: a checkerboard error of
    amplitude ``a`` scores about ``a`` while a constant offset ``a`` (pure low frequency, already
    handled by the pixel L1 term) scores ``a * 16^-(J-1)``. The pyramid is linear, so it is built
    once on ``x - x'``.

    Args:
        levels: pyramid levels ``J`` including the residual (default 5; reduced automatically so
            the residual is at least 1 pixel).
    """

    def __init__(self, *, levels: int = 5):
        super().__init__()
        if levels < 1:
            raise ConfigError(f"laplacian perceptual loss needs levels >= 1, got {levels}; pass levels >= 1 (default 5)")
        self.levels = levels
        self.register_buffer("kernel", torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0, persistent=False)
        self._freeze()

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        k = self.kernel.to(x)
        x = F.pad(x, (2, 2, 2, 2), mode="replicate")  # [B, C, H+4, W+4]
        x = F.conv2d(x, k.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)  # [B, C, H+4, W]
        return F.conv2d(x, k.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)  # [B, C, H, W]

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Laplacian pyramid ``[L^0, ..., L^{J-1}]`` of ``x`` ``[B, C, H, W]`` (finest first)."""
        levels = min(self.levels, min(x.shape[-2:]).bit_length())  # residual keeps >= 1 pixel
        bands, g = [], x
        for _ in range(levels - 1):
            down = self._blur(g)[..., ::2, ::2]  # [B, C, ceil(h/2), ceil(w/2)]
            up = F.interpolate(down, size=g.shape[-2:], mode="bilinear", align_corners=False)
            bands.append(g - up)  # band-pass detail at this octave
            g = down
        bands.append(g)  # low-pass residual
        return bands

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-sample Lap1 distance ``[B]`` (normalised as in the class docstring)."""
        with torch.autocast(device_type=a.device.type, enabled=False):
            d = a.float() - b.float()  # [B, C, H, W]; the pyramid is linear
            total = d.new_zeros(d.shape[0])
            for j, band in enumerate(self.pyramid(d)):
                total = total + 2.0 ** (-2 * j) * band.abs().sum(dim=(1, 2, 3))
            return total / d[0].numel()


class NoPerceptual(_Frozen):
    """Perceptual term switched off: distance 0 for every sample."""

    def __init__(self):
        super().__init__()
        self._freeze()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a.new_zeros(a.shape[0], dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


def _build_lpips(*, vgg_weights, remap_inputs: bool) -> nn.Module:
    return LPIPS(features=build_vgg16_features(vgg_weights), heads=load_lpips_heads(), remap_inputs=remap_inputs)


def _build_laplacian(*, vgg_weights, remap_inputs: bool) -> nn.Module:  # noqa: ARG001 - no weights
    return LaplacianPyramidL1()


def _build_none(*, vgg_weights, remap_inputs: bool) -> nn.Module:  # noqa: ARG001
    return NoPerceptual()


PERCEPTUAL: dict[str, Callable[..., nn.Module]] = {
    "lpips": _build_lpips,  # LPIPS-VGG, needs the local VGG16 file (spec 4.5)
    "laplacian": _build_laplacian,  # weight-free Lap1 (Bojanowski et al. 2018)
    "none": _build_none,
}


def build_perceptual(
    name: str, *, vgg_weights: str | os.PathLike | None = None, remap_inputs: bool = True
) -> nn.Module:
    """Build the perceptual distance ``name`` (a key of :data:`PERCEPTUAL`) -> module ``(a, b) -> [B]``.

    Args:
        name: ``"lpips"``, ``"laplacian"`` or ``"none"``.
        vgg_weights: local torchvision VGG16 file for ``"lpips"`` (else ``$REPAE_VGG16_WEIGHTS``).
        remap_inputs: LPIPS only; REPA-E's ``2u - 1`` quirk (default ``True``, see :class:`LPIPS`).
    """
    if name not in PERCEPTUAL:
        raise ConfigError(f"unknown perceptual loss {name!r}; set lreg.perceptual to one of {sorted(PERCEPTUAL)}")
    return PERCEPTUAL[name](vgg_weights=vgg_weights, remap_inputs=remap_inputs)
