"""fairprune's own small architectures, the ones its demos ship weights for.

Both are plain ``nn.Module`` s in one file each, registered by name in :mod:`fairprune.zoo`.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MLP", "SmallCNN"]


class MLP(nn.Module):
    """Tabular classifier with its preprocessing inside: standardise, then ReLU hidden layers.

    Input (N, in_features) float, raw feature values; output (N, num_classes) logits
    (num_classes=1: one logit, read as a binary classifier through a sigmoid).
    ``mean``/``std`` are buffers, saved with the weights, so a caller never has to re-create the
    scaling the model was trained with.
    """

    def __init__(self, in_features: int, num_classes: int = 2, hidden: tuple[int, ...] = (64, 32), dropout: float = 0.0):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("std", torch.ones(in_features))
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


class SmallCNN(nn.Module):
    """Two conv blocks (3x3 conv, BatchNorm, ReLU, 2x2 max-pool) and a two-layer head.

    Input (N, in_channels, H, W) float in [0, 1]; output (N, num_classes) logits. Adaptive pooling
    makes it accept any H, W >= 4.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, channels: tuple[int, int] = (32, 64), hidden: int = 128):
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c2 * 16, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
