"""Dense models: the built-in zoo, CIFAR-style VGG/ResNet, and safe checkpoints."""

from __future__ import annotations

from lpsd_search.models.checkpoint import load_checkpoint, load_weights, save_checkpoint
from lpsd_search.models.cifar import VGG, VGG_CONFIGS, CifarResNet
from lpsd_search.models.zoo import MODELS, build_model

__all__ = [
    "MODELS",
    "VGG",
    "VGG_CONFIGS",
    "CifarResNet",
    "build_model",
    "load_checkpoint",
    "load_weights",
    "save_checkpoint",
]
