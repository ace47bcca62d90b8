"""The input normalisation as the first layer of a deployed model.

A model is trained on normalised images; a deployed one is given raw images. Every exported
model (``lpsd_search.load``, the ``.pt2`` program, an ONNX file made from either) therefore
starts with ``InputNormalization``, built from the preprocessing record stored with the model
(``data.normalise.Preprocessing.to_dict``): ``(raw / input_scale − mean) / std`` per channel,
the same operations, in the same order, as the data pipeline applies during training.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

NORMALIZE = "normalize"
NETWORK = "network"
"""The children of a model with its preprocessing (``with_preprocessing``)."""


class InputNormalization(nn.Module):
    """``(x / input_scale − mean) / std`` per channel of a raw ``N×C×H×W`` image batch.

    Args:
        input_scale: the divisor that maps raw pixels to 0..1 (255 for 8-bit images).
        mean: per-channel mean after scaling.
        std: per-channel standard deviation after scaling.
    """

    def __init__(self, input_scale: float, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.input_scale = float(input_scale)
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> InputNormalization:
        """From a stored preprocessing record (``input_scale``, ``mean``, ``std``).

        Raises:
            KeyError, TypeError, ValueError: ``record`` is not a preprocessing record.
        """
        mean, std = [float(v) for v in record["mean"]], [float(v) for v in record["std"]]
        if len(mean) != len(std) or not mean:
            raise ValueError(f"mean and std of {len(mean)} and {len(std)} channels")
        return cls(float(record["input_scale"]), mean, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / self.input_scale - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"input_scale={self.input_scale:g}, channels={self.mean.shape[1]}"


def with_preprocessing(network: nn.Module, record: Mapping[str, Any]) -> nn.Sequential:
    """``network`` behind the input normalisation of ``record``: a model that takes raw images.

    The result is an ``nn.Sequential`` whose children are ``normalize`` and ``network``.
    """
    return nn.Sequential(OrderedDict([(NORMALIZE, InputNormalization.from_record(record)),
                                      (NETWORK, network)]))
