"""InceptionV3 of the TF "2015-12-05" FID graph, in PyTorch, with the ADM evaluator's three outputs.

What this is
    The network behind every published FID / sFID / IS / precision / recall number of
    ADM, DiT, SiT, REPA and REPA-E: OpenAI's evaluator feeds images to the TensorFlow frozen graph
    ``classify_image_graph_def.pb`` (spec-related-methods.md section 5.1). This module rebuilds that
    graph in PyTorch with the key layout of the ported weights ``pt_inception-2015-12-05-6726825d.pth``
    (pytorch-fid's release: 1008-class ``fc``, 566 tensors, about 95.7 MB), which the user supplies
    as a local file; nothing is ever downloaded.

How close it is to ADM's TF graph (what is known)
    This is the standard pytorch-fid approximation. With identical 299x299 input, the ported
    weights reproduce the TF activations (pytorch-fid's own validation); the remaining differences
    come from the input resize. ADM's graph resizes with TF1 ``ResizeBilinear`` (no half-pixel
    offset) and maps to [-1, 1] as ``(x - 128) / 128``; pytorch-fid uses
    ``F.interpolate(bilinear, align_corners=False)`` and ``2 x - 1``. ``resize="tf1"`` (default)
    reproduces the TF1 arithmetic, the approach of torch-fidelity whose ADM port matched TF to
    FID 3.9410 vs 3.9426, sFID 6.1405 vs 6.1404, IS 215.98 vs 215.84, precision/recall within ~2e-3
    on ImageNet-256 (spec 5.6). ``resize="pytorch-fid"`` gives pytorch-fid's numbers instead.
    Inputs that are already 299x299 need no resize and both modes agree up to the (x-128)/128 vs
    x/127.5-1 scaling. Numbers remain an approximation of the TF graph, not bit-identical.

Architecture choices
    Built on torchvision's ``Inception3(num_classes=1008, aux_logits=False, init_weights=False)``
    so the parameter names equal the ported file's, and only the FID-graph differences are patched
    (spec 5.6, pytorch-fid's "FID Inception" blocks): the 3x3 average pools in the branch-pool of
    Mixed_5b..5d (A), Mixed_6b..6e (C) and Mixed_7b (E_1) exclude padded zeros
    (``count_include_pad=False``), and Mixed_7c (E_2) uses a 3x3 max pool there. We reuse
    torchvision's blocks rather than writing the 94 convolutions ourselves to keep the exact key
    layout for free; we override only each block's ``_forward`` branch-pool.

Outputs of one forward (ADM section 5.1)
    * ``pool``    [B, 2048]  ``pool_3``: global average pool after Mixed_7c.
    * ``spatial`` [B, 2023]  ``mixed_6/conv``: TF's ``mixed_6`` is torchvision's **Mixed_6d**
      (TF mixed..mixed_2 = 5b..5d, mixed_3 = 6a, mixed_4..mixed_7 = 6b..6e), and its ``conv`` is the
      1x1 branch (``Mixed_6d.branch1x1`` after BN + ReLU, 17x17x192). ADM keeps the first 7 channels
      and flattens in NHWC order (h, w, c) -> 17 * 17 * 7 = 2023.
    * ``logits``  [B, 1008]  ``pool @ fc.weight.T`` **without the bias** (ADM takes the graph's
      ``softmax/logits/MatMul``, spec 5.1 / pitfall 21).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.models import inception as tv

from repae.errors import MissingWeightsError
from repae.interop.io import check_state_dict, read_weights, unwrap_entries

WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_ENV = "REPAE_INCEPTION_WEIGHTS"
#: the files a hub repository given as the Inception weights may hold (the first one present is read)
HUB_FILES = (WEIGHTS_FILENAME, "model.safetensors")
NUM_CLASSES = 1008  # the 2015-12-05 graph has 1008 outputs (1000 ImageNet classes + 8 unused)
INPUT_SIZE = 299
POOL_DIM = 2048
SPATIAL_CHANNELS = 7  # ADM keeps the first 7 of the 192 channels of mixed_6/conv
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS  # 2023
FEATURE_SPACE = "inception-2015-12-05 (ADM/pytorch-fid port)"
RESIZE_MODES = ("tf1", "pytorch-fid")

# ---------------------------------------------------------------------------------------------
# FID-graph blocks: torchvision blocks with the TF branch-pool behaviour
# ---------------------------------------------------------------------------------------------


def _avg_pool_no_pad(x: torch.Tensor) -> torch.Tensor:
    """TF ``AvgPool`` with SAME padding divides by the number of real (not padded) pixels."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _max_pool_same(x: torch.Tensor) -> torch.Tensor:
    """The last block of the FID graph max-pools in its pool branch (a TF-graph quirk)."""
    return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


class FIDInceptionA(tv.InceptionA):
    """Mixed_5b..5d: torchvision InceptionA with a no-padding-count average pool."""

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_no_pad(x))
        return [b1, b5, b3, bp]


class FIDInceptionC(tv.InceptionC):
    """Mixed_6b..6e: torchvision InceptionC with a no-padding-count average pool."""

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b1 = self.branch1x1(x)  # [B, 192, 17, 17]; Mixed_6d's is ADM's mixed_6/conv
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                      self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        bp = self.branch_pool(_avg_pool_no_pad(x))
        return [b1, b7, bd, bp]


class FIDInceptionE(tv.InceptionE):
    """Mixed_7b (``pool=_avg_pool_no_pad``) and Mixed_7c (``pool=_max_pool_same``)."""

    def __init__(self, in_channels: int, *, pool=_avg_pool_no_pad) -> None:
        super().__init__(in_channels)
        self._pool = pool

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        bp = self.branch_pool(self._pool(x))
        return [b1, b3, bd, bp]


# ---------------------------------------------------------------------------------------------
# Input resize
# ---------------------------------------------------------------------------------------------


def resize_bilinear_tf1(x: torch.Tensor, size: int) -> torch.Tensor:
    """TF1 ``ResizeBilinear(align_corners=False, half_pixel_centers=False)`` of ``[B, C, H, W]``.

    Source coordinate of output pixel ``i`` is ``i * in / out`` (no half-pixel offset), neighbours
    ``floor`` and ``min(floor + 1, in - 1)``, linear weights. PyTorch has no such mode, hence this.
    """
    def axis(n_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        src = torch.arange(size, dtype=torch.float64, device=x.device) * (n_in / size)  # [size]
        lo = src.floor().long().clamp_(max=n_in - 1)
        hi = (lo + 1).clamp_(max=n_in - 1)
        return lo, hi, (src - lo).to(x.dtype)

    h_lo, h_hi, h_w = axis(x.shape[-2])
    w_lo, w_hi, w_w = axis(x.shape[-1])
    top = x[..., h_lo, :] * (1 - h_w)[:, None] + x[..., h_hi, :] * h_w[:, None]  # [B, C, size, W]
    return top[..., w_lo] * (1 - w_w) + top[..., w_hi] * w_w  # [B, C, size, size]


def _preprocess(images: torch.Tensor, mode: str) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` -> float ``[B, 3, 299, 299]`` in [-1, 1] as the chosen port does."""
    if images.dtype != torch.uint8:
        raise TypeError(f"Inception expects uint8 images [B, 3, H, W], got {images.dtype}; convert with "
                        "repae.conventions.unit_to_uint8")
    x = images.float()  # [B, 3, H, W] in [0, 255]
    if mode == "tf1":
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = resize_bilinear_tf1(x, INPUT_SIZE)
        return (x - 128.0) / 128.0  # the graph's Sub/Mul after ResizeBilinear
    x = x / 255.0
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return 2.0 * x - 1.0


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


class FIDInceptionV3(tv.Inception3):
    """The FID InceptionV3 (TF 2015-12-05 graph) with pool / spatial / logits outputs.

    ``forward`` takes uint8 images ``[B, 3, H, W]`` of any size and returns
    ``(pool [B, 2048], spatial [B, 2023], logits [B, 1008])``; see the module docstring.
    """

    def __init__(self, *, resize: str = "tf1") -> None:  # "tf1": ADM's resize; "pytorch-fid": theirs
        super().__init__(
            num_classes=NUM_CLASSES,
            aux_logits=False,
            transform_input=False,
            init_weights=False,
            inception_blocks=[tv.BasicConv2d, FIDInceptionA, tv.InceptionB, FIDInceptionC,
                              tv.InceptionD, FIDInceptionE, tv.InceptionAux],
        )
        self.Mixed_7c = FIDInceptionE(2048, pool=_max_pool_same)
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        self.resize = resize
        self.eval()

    def forward(  # type: ignore[override]
        self, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = _preprocess(images, self.resize)  # [B, 3, 299, 299]
        x = self.Conv2d_1a_3x3(x)  # [B, 32, 149, 149]
        x = self.Conv2d_2a_3x3(x)  # [B, 32, 147, 147]
        x = self.Conv2d_2b_3x3(x)  # [B, 64, 147, 147]
        x = self.maxpool1(x)  # [B, 64, 73, 73]
        x = self.Conv2d_3b_1x1(x)  # [B, 80, 73, 73]
        x = self.Conv2d_4a_3x3(x)  # [B, 192, 71, 71]
        x = self.maxpool2(x)  # [B, 192, 35, 35]
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # [B, 288, 35, 35]
        x = self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))  # [B, 768, 17, 17]
        branches = self.Mixed_6d._forward(x)  # TF mixed_6; branches[0] is mixed_6/conv
        mixed6_conv = branches[0][:, :SPATIAL_CHANNELS]  # [B, 7, 17, 17]
        spatial = mixed6_conv.permute(0, 2, 3, 1).flatten(1)  # [B, 2023] NHWC order like TF
        x = torch.cat(branches, 1)  # [B, 768, 17, 17]
        x = self.Mixed_6e(x)  # [B, 768, 17, 17]
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))  # [B, 2048, 8, 8]
        pool = x.mean(dim=(2, 3))  # [B, 2048] pool_3
        logits = F.linear(pool, self.fc.weight)  # [B, 1008], no bias (ADM softmax/logits/MatMul)
        return pool, spatial, logits


def resolve_weights_path(path: str | os.PathLike | None = None) -> Path | None:
    """The Inception weights to use: ``path``, else ``$REPAE_INCEPTION_WEIGHTS``, else None.

    A Hugging Face hub id (``owner/name``: the first of :data:`HUB_FILES` in its cached snapshot;
    ``owner/name/file.pth``: that file) is read from the local hub cache, never downloaded.

    Raises:
        MissingWeightsError: a hub id that is not cached (one line naming the id and the file to place).
    """
    from repae.interop.hub import resolve_weights_file

    chosen = path if path is not None else os.environ.get(WEIGHTS_ENV) or None
    chosen = resolve_weights_file(chosen, HUB_FILES, f"FID InceptionV3 weights {WEIGHTS_FILENAME}")
    return Path(chosen).expanduser() if chosen is not None else None


def load_inception(path: str | os.PathLike | None = None, *, resize: str = "tf1",
                   device: str | torch.device = "cpu") -> FIDInceptionV3:
    """Build :class:`FIDInceptionV3` and load ``pt_inception-2015-12-05-6726825d.pth`` strictly.

    ``path`` defaults to ``$REPAE_INCEPTION_WEIGHTS``. Only BatchNorm ``num_batches_tracked``
    buffers may be absent from the file (they do not affect eval-mode outputs); any other missing
    or unexpected key is an error.

    Raises:
        MissingWeightsError: no path given / the file does not exist.
        ValueError: the file is not in the pytorch-fid key layout.
    """
    weights = resolve_weights_path(path)
    if weights is None or not weights.is_file():
        where = f" (looked for {weights})" if weights is not None else ""
        raise MissingWeightsError(
            f"FID InceptionV3 weights {WEIGHTS_FILENAME} not found{where}",
            f"download it once (pytorch-fid release 'fid_weights') and pass --inception-weights PATH or set "
            f"{WEIGHTS_ENV}=PATH; without it the offline evaluation network 'evalnet-fmnist' is used "
            "(numbers NOT comparable with published FID)",
        )
    state = unwrap_entries(read_weights(weights, what=f"{WEIGHTS_FILENAME} file",
                                        fix=f"pass the pytorch-fid release file {WEIGHTS_FILENAME}"), ("state_dict",))
    model = FIDInceptionV3(resize=resize)
    # only BatchNorm num_batches_tracked may be absent (eval-mode outputs do not use it)
    check_state_dict(state, model.state_dict(), what=f"{weights} is not a {WEIGHTS_FILENAME}-layout state dict",
                     may_miss=("num_batches_tracked",))
    model.load_state_dict(state, strict=False)
    return model.to(device).eval().requires_grad_(False)
