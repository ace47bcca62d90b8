"""The evaluator: plan → compressed model → short fine-tune → measurements.

It knows nothing about the search driving it (Optuna in-process, or Ray Tune later): it takes a
plan and returns numbers, so every backend runs exactly the same trial.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from lpsd_search.data import DataSplits
from lpsd_search.decompositions.cache import FactorCache
from lpsd_search.measure import ModelSize, measure
from lpsd_search.plan import Plan, apply_plan
from lpsd_search.train import TrainConfig, accuracy, train

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Measurement:
    """What one trial measured on the built model.

    Attributes:
        params: parameters of the compressed model.
        bytes: bytes a deployed file would hold.
        flops: multiply-accumulates per sample.
        accuracy: validation accuracy (what the search optimises).
        test_accuracy: test accuracy (reported only, never used to choose).
        seconds: wall time of the trial.
    """

    params: int
    bytes: int
    flops: int
    accuracy: float
    test_accuracy: float
    seconds: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


class Evaluator:
    """Runs trials against one dense model and one dataset.

    Args:
        model: the trained dense model (not modified).
        data: the train / validation / test splits.
        finetune: fine-tuning settings applied to every compressed model.
        device: where decomposition, fine-tuning and evaluation run.
        cache: factors shared by every plan this evaluator builds (trials repeat layers).
    """

    def __init__(self, model: nn.Module, data: DataSplits, finetune: TrainConfig,
                 device: torch.device, cache: FactorCache | None = None) -> None:
        self.model = model.to(device).eval()
        # One cache for every plan of this evaluator: a search's trials repeat most layers.
        self.cache = cache if cache is not None else FactorCache()
        self.data = data
        self.finetune = finetune
        self.device = device
        height, width = data.input_size
        self.example = torch.zeros(1, data.in_channels, height, width, device=device)

    def size(self, model: nn.Module) -> ModelSize:
        """Measured params / bytes / FLOPs of ``model`` at the data's input size."""
        return measure(model, self.example)

    def baseline(self) -> Measurement:
        """Measurements of the dense model, without fine-tuning."""
        start = time.perf_counter()
        size = self.size(self.model)
        return Measurement(
            size.params, size.bytes, size.flops,
            accuracy(self.model, self.data.val, self.device),
            accuracy(self.model, self.data.test, self.device),
            time.perf_counter() - start,
        )

    def build(self, plan: Plan) -> nn.Module:
        """The compressed model of ``plan`` before fine-tuning."""
        return apply_plan(self.model, plan, self.cache)

    def evaluate(self, plan: Plan) -> tuple[Measurement, nn.Module]:
        """Build, fine-tune and measure ``plan``.

        Returns:
            The measurements and the fine-tuned compressed model.

        Raises:
            TrainingDiverged: the fine-tune produced a NaN or infinite loss.
        """
        start = time.perf_counter()
        model = self.build(plan)
        if self.finetune.steps > 0:
            train(model, self.data.train, self.finetune, self.device)
        model.eval()
        size = self.size(model)
        result = Measurement(
            size.params, size.bytes, size.flops,
            accuracy(model, self.data.val, self.device),
            accuracy(model, self.data.test, self.device),
            time.perf_counter() - start,
        )
        logger.debug("plan %s -> %s", plan.summary(), result)
        return result, model
