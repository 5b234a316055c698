"""A small configurable CNN for small square images (28x28 gray silhouettes by default).

``depth`` convolution blocks (3x3 conv, batch norm, ReLU), the channel count
doubling from ``width`` at each block, with 2x2 max pooling after every block but
the last; then global average pooling, dropout and one linear layer giving one
logit per class. Width 16 and depth 3 reach about 96 % on cat vs dog.

Only operators every ONNX Runtime build has (Conv, BatchNormalization folded at
export, Relu, MaxPool, GlobalAveragePool, Gemm) are used, so the same file runs on
the CPU, CUDA and TensorRT profiles.
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.errors import TrainConfigError

__all__ = ["MAX_DEPTH", "AnimalNet"]

# 28 -> 14 -> 7 -> 3 -> 1 after four poolings: a fifth block is the deepest that fits.
MAX_DEPTH = 5


class AnimalNet(nn.Module):
    """Conv blocks, global average pooling, dropout and a linear classifier.

    Args:
        num_classes: the number of output logits (two or more).
        width: channels of the first block; each later block doubles them.
        depth: the number of convolution blocks, 1..``MAX_DEPTH``.
        dropout: the dropout probability before the classifier, in [0, 1).
        in_channels: 1 for gray input, 3 for RGB.

    Raises:
        TrainConfigError: a size is out of range.
    """

    def __init__(
        self,
        num_classes: int,
        width: int = 16,
        depth: int = 3,
        dropout: float = 0.3,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise TrainConfigError(f"need at least two classes, got {num_classes}")
        if not 1 <= width <= 256:
            raise TrainConfigError(f"width should be 1..256, got {width}")
        if not 1 <= depth <= MAX_DEPTH:
            raise TrainConfigError(f"depth should be 1..{MAX_DEPTH}, got {depth}")
        if not 0.0 <= dropout < 1.0:
            raise TrainConfigError(f"dropout should be in [0, 1), got {dropout}")
        if in_channels not in (1, 3):
            raise TrainConfigError(f"in_channels should be 1 or 3, got {in_channels}")
        layers: list[nn.Module] = []
        channels_in = in_channels
        for block in range(depth):
            channels_out = width * 2**block
            layers += [
                nn.Conv2d(channels_in, channels_out, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(channels_out),
                nn.ReLU(inplace=True),
            ]
            if block < depth - 1:
                layers.append(nn.MaxPool2d(2))
            channels_in = channels_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(channels_in, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a float32 (N, C, H, W) batch to (N, num_classes) logits."""
        return self.head(self.features(x))
