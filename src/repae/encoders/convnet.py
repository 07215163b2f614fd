"""``repae-cnn-p4``: the project's small convolutional alignment encoder (32x32 in, 8x8 = 64 tokens out).

Why a CNN next to ``repae-vit-t4`` (issue 21): REPA only helps when its target carries features
the generator does not learn alone. The MAE-trained ViT probes at 82.0 % on the embedded test
split, *below* raw pixels (83.3 %). A contrastive objective (SimCLR, Chen et al. 2020) probes far
better than MAE at equal compute, and on a 2-core CPU a ResNet-style CNN does a contrastive epoch
over all 60,000 Fashion-MNIST training images in under two minutes (bf16 autocast), where the
ViT would need ~20. The CNN's last feature map has the same 8x8 grid as ``repae-vit-t4``'s patch
tokens, so it is a drop-in target for the SiT-T/1 tokens of the embedded job.

Architecture (``width`` = w, default 32; BatchNorm in eval mode once frozen)::

    stem   conv3x3(3 -> w)            32x32   BN ReLU
    down1  conv3x3/2(w -> 2w)         16x16   BN ReLU, then one residual block (2 x conv3x3)
    down2  conv3x3/2(2w -> 4w)         8x8    BN ReLU, then two residual blocks
    head   conv1x1(4w -> 16w)          8x8    BN ReLU: the tokens [B, 64, 16w] = [B, 64, 512]

The head is a wide *nonlinear* expansion on purpose: a linear head would make the mean-pooled
tokens (what the linear probe and SimCLR read) a linear function of the 4w stage features, so
its width would add nothing; after the ReLU the pooled 16w features are richer than the 4w ones.

Every token has a receptive field covering the whole 32x32 image (the nine 3x3 convolutions
give 49 px), so the tokens carry both place and global shape, like ViT tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from repae.encoders.base import RepresentationEncoder

CNN_P4_WIDTH = 32  # w: token width is 16w = 512


def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    """``relu(x + BN(conv(relu(BN(conv(x))))))`` (He et al. 2016, basic block, no downsampling)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class ConvTokenNet(nn.Module):
    """32x32 images in ``[-1, 1]`` -> tokens ``[B, (H/4)*(W/4), 16w]`` (row-major, like ViT patches)."""

    def __init__(self, width: int = CNN_P4_WIDTH, in_chans: int = 3):
        super().__init__()
        w = int(width)
        self.width = w
        self.embed_dim = 16 * w
        self.patch_size = 4
        self.stem = _conv_bn_relu(in_chans, w, 1)
        self.stage1 = nn.Sequential(_conv_bn_relu(w, 2 * w, 2), ResidualBlock(2 * w))
        self.stage2 = nn.Sequential(_conv_bn_relu(2 * w, 4 * w, 2), ResidualBlock(4 * w), ResidualBlock(4 * w))
        self.head = nn.Sequential(nn.Conv2d(4 * w, 16 * w, 1, bias=False), nn.BatchNorm2d(16 * w), nn.ReLU(inplace=True))

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, 16w, H/4, W/4]``."""
        return self.head(self.stage2(self.stage1(self.stem(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> tokens ``[B, H*W/16, 16w]``."""
        return self.feature_map(x).flatten(2).transpose(1, 2)  # [B, N, D]


def build_cnn_p4(**overrides) -> ConvTokenNet:
    """The exact ``repae-cnn-p4`` architecture, randomly initialised (``overrides``: tests only)."""
    return ConvTokenNet(**overrides)


class ConvTokenEncoder(RepresentationEncoder):
    """A frozen :class:`ConvTokenNet` behind the encoder interface (uint8 in, tokens out)."""

    def __init__(self, model: ConvTokenNet, **kwargs) -> None:
        super().__init__(embed_dim=model.embed_dim, patch_size=model.patch_size, **kwargs)
        self.model = model

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # [B, N, D]


def load_convnet_weights(enc: ConvTokenEncoder, spec, path: str):
    """Strictly load a safetensors / ``weights_only`` state dict into ``enc.model`` (never unpickles code)."""
    from repae.encoders.spec import LoadReport
    from repae.interop.io import check_state_dict
    from repae.interop.timm_vit import read_checkpoint, unwrap

    obj, _ = read_checkpoint(path)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in unwrap(obj, spec.checkpoint_entries).items()}
    check_state_dict(state, enc.model.state_dict(), what=f"{path} does not fit {spec.name}",
                     hint=f"; pass weights for {spec.name}")
    enc.model.load_state_dict(state, strict=True, assign=True)
    return LoadReport(path=str(path), format="repae", num_tensors=len(state))
