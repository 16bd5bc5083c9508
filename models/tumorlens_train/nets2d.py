"""A compact residual CNN for 2D slice classification, sized to learn from scratch on a CPU.

The head is global average pooling + one linear layer, so a class activation map (CAM) is the
linear weights of that class applied to the last feature maps:
``CAM_k = sum_c W[k, c] * F[c]`` and ``logits_k = mean_hw(CAM_k) + b_k``.
The network returns ``(logits, features)`` so the exported ONNX exposes both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class NetConfig:
    """Architecture knobs; stored in checkpoints and the model card."""

    in_channels: int = 1
    num_classes: int = 4
    stem_width: int = 32
    widths: tuple[int, ...] = (32, 64, 128, 256)
    blocks: tuple[int, ...] = (1, 1, 2, 1)
    # The last stage keeps stride 1 so the CAM grid is input/16 (8x8 at 128 px), not input/32.
    strides: tuple[int, ...] = (2, 2, 2, 1)
    dropout: float = 0.2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetConfig:
        # JSON and checkpoints turn tuples into lists; unknown keys are from newer versions.
        kwargs: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v
            for k, v in data.items()
            if k in cls.__dataclass_fields__
        }
        return cls(**kwargs)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int) -> list[nn.Module]:
    # bias=False: BatchNorm's shift makes a conv bias redundant.
    return [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
    ]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn(cin, cout, 3, stride), nn.ReLU(inplace=True), *_conv_bn(cout, cout, 3, 1)
        )
        self.shortcut: nn.Module = (
            nn.Sequential(*_conv_bn(cin, cout, 1, stride))
            if stride != 1 or cin != cout
            else nn.Identity()
        )
        self.act = nn.ReLU(inplace=True)
        # Zero-init the last BN scale so each block starts as identity: stabler from scratch.
        last_bn = self.body[-1]
        assert isinstance(last_bn, nn.BatchNorm2d)
        nn.init.zeros_(last_bn.weight)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.act(self.body(x) + self.shortcut(x))
        return out


class SliceNet(nn.Module):
    """Residual CNN returning ``(logits [N, K], features [N, C, h, w])``."""

    def __init__(self, config: NetConfig | None = None) -> None:
        super().__init__()
        cfg = config or NetConfig()
        if not len(cfg.widths) == len(cfg.blocks) == len(cfg.strides):
            raise ValueError("widths, blocks and strides must have the same length")
        self.config = cfg
        self.stem = nn.Sequential(
            *_conv_bn(cfg.in_channels, cfg.stem_width, 3, 2), nn.ReLU(inplace=True)
        )
        layers: list[nn.Module] = []
        cin = cfg.stem_width
        for width, count, stride in zip(cfg.widths, cfg.blocks, cfg.strides, strict=True):
            for i in range(count):
                layers.append(BasicBlock(cin, width, stride if i == 0 else 1))
                cin = width
        self.stages = nn.Sequential(*layers)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cin, cfg.num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    @property
    def feature_channels(self) -> int:
        return self.head.in_features

    def head_weight(self) -> Tensor:
        """``W [K, C]`` of the CAM recipe."""
        return self.head.weight

    def head_bias(self) -> Tensor:
        return self.head.bias

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.stages(self.stem(x))
        pooled = features.mean(dim=(2, 3))
        return self.head(self.dropout(pooled)), features


class SliceEnsemble(nn.Module):
    """Mean logits of several SliceNets, each run on the image and (``mirror``) on its
    left-right mirror image; features of every view, the mirrored ones flipped back, are
    concatenated along channels.

    Still a GAP + linear head as a whole: with V views (members x mirrors), ``logits = mean_v
    (GAP(F_v) W_v^T + b_v) = GAP(cat_v F_v) (cat_v W_v / V)^T + mean_v b_v``, so the CAM
    recipe holds with :meth:`head_weight` and :meth:`head_bias`, and the maps average the
    views' maps. The mirror is the training augmentation's flip, so each view is one the
    members were trained on.
    """

    def __init__(self, members: Sequence[SliceNet], mirror: bool = True) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        shapes = {(m.config.in_channels, m.config.num_classes, m.feature_channels) for m in members}
        if len(shapes) != 1:
            raise ValueError(f"members differ in channels/classes/features: {sorted(shapes)}")
        self.members = nn.ModuleList(members)
        self.mirror = mirror
        self.config = members[0].config

    @property
    def views(self) -> int:
        return len(self.members) * (2 if self.mirror else 1)

    def head_weight(self) -> Tensor:
        per_view = [m.head.weight for m in self.members for _ in range(1 + int(self.mirror))]
        return torch.cat(per_view, dim=1) / self.views

    def head_bias(self) -> Tensor:
        return torch.stack([m.head.bias for m in self.members]).mean(dim=0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logits: list[Tensor] = []
        features: list[Tensor] = []
        for member in self.members:
            out, feats = member(x)
            logits.append(out)
            features.append(feats)
            if self.mirror:
                out, feats = member(torch.flip(x, dims=(3,)))
                logits.append(out)
                features.append(torch.flip(feats, dims=(3,)))
        return torch.stack(logits).mean(dim=0), torch.cat(features, dim=1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build(config: NetConfig | None = None) -> SliceNet:
    return SliceNet(config)


def load_checkpoint(path: str, map_location: str = "cpu") -> tuple[SliceNet, dict[str, Any]]:
    """Rebuild the net from a checkpoint written by training; returns ``(model, checkpoint)``."""
    checkpoint: dict[str, Any] = torch.load(path, map_location=map_location, weights_only=True)
    model = SliceNet(NetConfig.from_dict(checkpoint["config"]))
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    return model, checkpoint
