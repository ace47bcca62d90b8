"""Dense models: the built-in zoo, CIFAR-style VGG/ResNet, safe checkpoints, the digests of a
model's code (``code``), objects given from Python (``objects``) and the input normalisation
layer of deployed models (``preprocessing``)."""

from __future__ import annotations

from lpsd_search.models.checkpoint import load_checkpoint, load_weights, save_checkpoint
from lpsd_search.models.cifar import VGG, VGG_CONFIGS, CifarResNet
from lpsd_search.models.preprocessing import InputNormalization, with_preprocessing
from lpsd_search.models.zoo import MODELS, build_model

__all__ = [
    "MODELS",
    "VGG",
    "VGG_CONFIGS",
    "CifarResNet",
    "InputNormalization",
    "build_model",
    "load_checkpoint",
    "load_weights",
    "save_checkpoint",
    "with_preprocessing",
]
