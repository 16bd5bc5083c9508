"""A compact 3D U-Net with a second, classification head on its encoder (one network, two heads).

Why one network: on two shared CPU cores every training step is precious; the segmentation
labels teach the encoder where the tumour is, and the type head reads the same bottleneck. One
forward pass at inference gives both the label map and the type, and one ONNX file ships.

* input ``image`` ``(N, 4, X, Y, Z)``: T1, T1c, T2, FLAIR on the model grid
  (:mod:`tumorlens.inference.preprocess3d`); a missing sequence is an all-zero channel.
* output ``seg_logits`` ``(N, 4, X, Y, Z)``: internal labels 0 background, 1 necrotic /
  non-enhancing core, 2 oedema, 3 enhancing (softmax -> probabilities).
* output ``type_logits`` ``(N, 6)``: healthy, hgg, lgg, metastasis, meningioma, pituitary.
  Grade (HGG vs LGG) is derived, not a separate head: ``P(HGG) / (P(HGG) + P(LGG))``.
* output ``type_features`` ``(N, C, X/8, Y/8, Z/8)``: the maps the type head pools. The type head
  is global average pooling + one linear layer, so ``CAM_k = sum_c W[k, c] F[c]`` and
  ``type_logits_k = mean(CAM_k) + b_k`` (checked at export).

Type head, two variants (``type_head_width``):

* ``0``: GAP straight on the bottleneck. Found not to learn: after instance norm + LeakyReLU
  the spatial mean of every channel is fixed by the norm's affine parameters and the shape of
  the distribution, so GAP carries almost no information about the case (type loss stayed at
  ln 6 in the first shipped run).
* ``> 0``: a 3x3x3 conv + ReLU + 1x1x1 conv + ReLU (no norm) on the bottleneck, then GAP +
  linear. The ReLU maps fire where tumour-like patterns are, so their mean measures them. The
  shipped model trains this head in a second stage on the frozen, segmentation-trained encoder
  (``train_volumes.train_type_head``).

Blocks: two 3x3x3 convolutions, each with instance norm (batch sizes of 1-2 make batch norm
unusable) and LeakyReLU; stride-2 convolutions down, transposed convolutions up.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

TYPE_CLASSES: tuple[str, ...] = ("healthy", "hgg", "lgg", "metastasis", "meningioma", "pituitary")
SEG_CLASSES: tuple[str, ...] = ("background", "core", "oedema", "enhancing")


@dataclass(frozen=True)
class Net3dConfig:
    in_channels: int = 4
    seg_classes: int = len(SEG_CLASSES)
    type_classes: int = len(TYPE_CLASSES)
    base: int = 12
    levels: int = 4  # resolutions; the bottleneck is input / 2**(levels-1)
    dropout: float = 0.2
    type_head_width: int = 0  # 0: GAP on the bottleneck; >0: conv head of this width first

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Net3dConfig:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.base * 2**i for i in range(self.levels))


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.InstanceNorm3d(cout, affine=True),
        nn.LeakyReLU(0.01, inplace=True),
        nn.Conv3d(cout, cout, 3, padding=1, bias=False),
        nn.InstanceNorm3d(cout, affine=True),
        nn.LeakyReLU(0.01, inplace=True),
    )


class TumourNet3d(nn.Module):
    """Returns ``(seg_logits, type_logits, type_features)``."""

    def __init__(self, config: Net3dConfig | None = None) -> None:
        super().__init__()
        self.config = config or Net3dConfig()
        w = self.config.widths
        self.down = nn.ModuleList(
            [_block(self.config.in_channels, w[0])]
            + [_block(w[i - 1], w[i], stride=2) for i in range(1, len(w))]
        )
        self.up = nn.ModuleList(
            [nn.ConvTranspose3d(w[i], w[i - 1], 2, stride=2) for i in range(len(w) - 1, 0, -1)]
        )
        self.dec = nn.ModuleList([_block(2 * w[i - 1], w[i - 1]) for i in range(len(w) - 1, 0, -1)])
        self.seg_head = nn.Conv3d(w[0], self.config.seg_classes, 1)
        self.dropout = nn.Dropout(self.config.dropout)
        tw = self.config.type_head_width
        self.type_conv: nn.Module = (
            nn.Sequential(
                nn.Conv3d(w[-1], tw, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv3d(tw, tw, 1),
                nn.ReLU(inplace=True),
            )
            if tw
            else nn.Identity()
        )
        self.type_head = nn.Linear(tw or w[-1], self.config.type_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        skips: list[Tensor] = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        features = self.type_conv(x)
        pooled = features.mean(dim=(2, 3, 4))
        type_logits = self.type_head(self.dropout(pooled))
        for up, dec, skip in zip(self.up, self.dec, reversed(skips[:-1]), strict=True):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.seg_head(x), type_logits, features


class StagedInstanceNorm3d(nn.Module):
    """:class:`torch.nn.InstanceNorm3d` (affine, no running stats) written as reductions over
    Z, then Y and X, for export.

    Why: ONNX Runtime's CPU InstanceNormalization (and a single ReduceMean over X*Y*Z, about
    330 000 voxels here) sums in one float32 pass; where a channel's mean is large against its
    spread the normalised values then drift (measured: 8.6e-4 after the first block, 8e-3 on
    the seg logits of a trained model on real inputs, against 3e-5 for torch). Shorter sums
    (64, then 80 x 64) keep ORT within 1e-4 of torch. Same maths, same parameters.
    """

    def __init__(self, norm: nn.InstanceNorm3d) -> None:
        super().__init__()
        if norm.weight is None or norm.bias is None or norm.track_running_stats:
            raise ValueError("only affine instance norm without running statistics")
        self.eps = float(norm.eps)
        self.weight = norm.weight
        self.bias = norm.bias

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=4, keepdim=True).mean(dim=(2, 3), keepdim=True)
        centred = x - mean
        var = (centred * centred).mean(dim=4, keepdim=True).mean(dim=(2, 3), keepdim=True)
        scale = self.weight.view(1, -1, 1, 1, 1) / torch.sqrt(var + self.eps)
        return centred * scale + self.bias.view(1, -1, 1, 1, 1)


def for_export(model: TumourNet3d) -> TumourNet3d:
    """A copy of ``model`` with every instance norm as :class:`StagedInstanceNorm3d`."""
    exported = copy.deepcopy(model).eval()

    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.InstanceNorm3d):
                setattr(module, name, StagedInstanceNorm3d(child))
            else:
                swap(child)

    swap(exported)
    return exported


def encode(model: TumourNet3d, x: Tensor) -> Tensor:
    """The bottleneck (input of the type head)."""
    for block in model.down:
        x = block(x)
    return x


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_checkpoint(path: str) -> tuple[TumourNet3d, dict[str, Any]]:
    ckpt: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    model = TumourNet3d(Net3dConfig.from_dict(ckpt["net"]))
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, ckpt
