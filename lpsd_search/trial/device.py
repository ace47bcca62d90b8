"""Which device a run uses: ``auto`` picks CUDA when there is a GPU."""

from __future__ import annotations

import torch

from lpsd_search.errors import UserInputError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when there is a GPU; otherwise the named device, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserInputError(f"unknown device {name!r}; valid: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(f"device {name!r} is not available here; valid: auto, cpu")
    if device.type not in ("cpu", "cuda"):
        raise UserInputError(f"unsupported device {name!r}; valid: auto, cpu, cuda, cuda:N")
    if device.type == "cuda" and device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:  # torch accepts any index here and fails at the first use
            raise UserInputError(f"device {name!r} does not exist here; valid: auto, cpu, "
                                 f"cuda:0 to cuda:{count - 1}")
    return device
