"""The evaluator: plan → compressed model → short fine-tune → measurements.

It knows nothing about the search driving it (Optuna in-process, or Ray Tune): it takes a plan
and returns numbers, so every backend runs exactly the same trial.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from lpsd_search.config import TrainConfig
from lpsd_search.data.splits import DataSplits
from lpsd_search.decompositions.cache import FactorCache
from lpsd_search.decompositions.geometry import LayerGeometry
from lpsd_search.plan.apply import apply_plan
from lpsd_search.plan.choices import Plan
from lpsd_search.plan.measure import ModelSize, measure
from lpsd_search.trial.admm import AdmmCache, admm_targets, admm_train, target_family
from lpsd_search.trial.batching import batches
from lpsd_search.trial.incremental import IncrementalForward
from lpsd_search.trial.orthogonal import OrthogonalRegulariser
from lpsd_search.trial.runtime import Runtime, fp32_decompositions
from lpsd_search.trial.train import score, train

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
        loss: validation cross-entropy.
        latency_ms: median forward latency on the evaluation device (NaN when not measured).
        finetune_steps: fine-tune steps this measurement had.
        build_seconds: ADMM training (on a miss of the ADMM cache), decomposing and building
            the compressed model (cache hits are cheap); in a search, choosing the plan too.
        plan_seconds: of ``build_seconds``, choosing the plan (a search's repair, or an
            allocator's plan such as ALPSD's local selection; NaN outside a search).
        finetune_seconds: the fine-tune.
        eval_seconds: measuring size, validation and test accuracy (and latency).
        admm_steps: ADMM steps the dense model had before it was decomposed (0: none, also
            when no layer of the plan has a method ADMM constrains).
        admm_rho: ρ at the start of that ADMM training (NaN without one).
        admm_rho_growth: ρ's factor per dual update (NaN without ADMM).
        orth_reg: weight of the orthogonality penalty in the fine-tune (0: none).
    """

    params: int
    bytes: int
    flops: int
    accuracy: float
    test_accuracy: float
    seconds: float
    loss: float = math.nan
    latency_ms: float = math.nan
    finetune_steps: int = 0
    build_seconds: float = math.nan
    plan_seconds: float = math.nan
    finetune_seconds: float = math.nan
    eval_seconds: float = math.nan
    admm_steps: int = 0
    admm_rho: float = math.nan
    admm_rho_growth: float = math.nan
    orth_reg: float = 0.0

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@torch.no_grad()
def measure_latency(model: nn.Module, example: torch.Tensor, runs: int = 20,
                    warmup: int = 3) -> float:
    """Median wall time in ms of one forward pass over ``example`` (synchronised on CUDA)."""
    model.eval()
    cuda = example.device.type == "cuda"
    times = []
    for index in range(warmup + runs):
        if cuda:
            torch.cuda.synchronize(example.device)
        start = time.perf_counter()
        model(example)
        if cuda:
            torch.cuda.synchronize(example.device)
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return 1000.0 * sorted(times)[len(times) // 2]


class Evaluator:
    """Runs trials against one dense model and one dataset.

    Args:
        model: the trained dense model (not modified).
        data: the train / validation / test splits.
        finetune: fine-tuning settings applied to every compressed model.
        device: where decomposition, fine-tuning and evaluation run.
        cache: factors shared by every plan this evaluator builds (trials repeat layers).
        latency_batch: batch size of the latency measurement; None skips it.
        latency_runs: timed passes per latency measurement.
        runtime: precision, memory format and compilation of fine-tuning and evaluation
            (default: fp32 on ``device``); decompositions run in fp32 whatever it says.

    With ``finetune.admm_steps`` the dense model is first trained by ADMM towards each plan's
    ranks (``trial.admm``; one model per target family, kept in ``admm_cache``), and with
    ``finetune.orth_reg`` the fine-tune adds the orthogonality penalty on the factors
    (``trial.orthogonal``).
    """

    def __init__(self, model: nn.Module, data: DataSplits, finetune: TrainConfig,
                 device: torch.device, cache: FactorCache | None = None,
                 latency_batch: int | None = None, latency_runs: int = 20,
                 runtime: Runtime | None = None) -> None:
        self.runtime = runtime if runtime is not None else Runtime(device)
        self.model = model.to(device).eval()
        # One cache for every plan of this evaluator: a search's trials repeat most layers.
        self.cache = cache if cache is not None else FactorCache()
        self.data = data
        self.finetune = finetune
        self.device = device
        height, width = data.input_size
        self.example = torch.zeros(1, data.in_channels, height, width, device=device)
        self.latency_batch = latency_batch
        self.latency_runs = latency_runs
        # The dense model as a frozen teacher for distillation (never trained).
        self.teacher: nn.Module | None = None
        if finetune.distill_alpha > 0:
            self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.methods = finetune.method_settings()
        self.admm_cache = AdmmCache()

    def size(self, model: nn.Module) -> ModelSize:
        """Measured params / bytes / FLOPs of ``model`` at the data's input size."""
        return measure(model, self.example)

    def _measure(self, model: nn.Module, start: float, steps: int,
                 phases: tuple[float, float] = (math.nan, math.nan),
                 test: bool = True) -> Measurement:
        began = time.perf_counter()
        model.eval()
        size = self.size(model)
        val_accuracy, val_loss = score(model, self.data.val, self.device, runtime=self.runtime)
        test_accuracy = self.test_accuracy(model) if test else math.nan
        latency = math.nan
        if self.latency_batch:
            batch = self.example.expand(self.latency_batch, *self.example.shape[1:]).contiguous()
            latency = measure_latency(model, batch, self.latency_runs)
        end = time.perf_counter()
        return Measurement(size.params, size.bytes, size.flops, val_accuracy, test_accuracy,
                           end - start, val_loss, latency, steps, build_seconds=phases[0],
                           finetune_seconds=phases[1], eval_seconds=end - began)

    def baseline(self) -> Measurement:
        """Measurements of the dense model, without fine-tuning."""
        return self._measure(self.model, time.perf_counter(), 0)

    def test_accuracy(self, model: nn.Module) -> float:
        """Accuracy of ``model`` on the test split (reported only, never used to choose)."""
        return score(model, self.data.test, self.device, runtime=self.runtime)[0]

    def dense_for(self, plan: Plan) -> nn.Module:
        """The dense model ``plan`` is decomposed from: ``model``, or with ADMM on, ``model``
        trained by ADMM towards the plan's target family (trained on the family's first use)."""
        targets = admm_targets(plan) if self.methods["admm_steps"] else {}
        if not targets:
            return self.model
        return self.admm_cache.get_or_train(target_family(targets), lambda: admm_train(
            self.model, targets, self.data.train, self.finetune, self.device, self.runtime,
            self.teacher))

    def build(self, plan: Plan) -> nn.Module:
        """The compressed model of ``plan`` before fine-tuning (factors computed in fp32)."""
        dense = self.dense_for(plan)
        with fp32_decompositions():
            return apply_plan(dense, plan, self.cache)

    def _orthogonal(self, model: nn.Module, plan: Plan) -> OrthogonalRegulariser | None:
        """The fine-tune's orthogonality penalty on ``model``, or None when it is off."""
        if not self.methods["orth_reg"]:
            return None
        modules = dict(self.model.named_modules())
        geometries = {name: LayerGeometry.of(modules[name]) for name in plan.compressed()}
        regulariser = OrthogonalRegulariser(model, plan, geometries, self.methods["orth_reg"])
        return regulariser if regulariser.factors else None

    def _methods_used(self, plan: Plan, orthogonal: bool) -> dict[str, Any]:
        """The ``Measurement`` fields of the training-time methods this trial had."""
        used: dict[str, Any] = {"orth_reg": self.methods["orth_reg"] if orthogonal else 0.0}
        if self.methods["admm_steps"] and admm_targets(plan):
            used.update(admm_steps=int(self.methods["admm_steps"]),
                        admm_rho=self.methods["admm_rho"],
                        admm_rho_growth=self.methods["admm_rho_growth"])
        return used

    def evaluate(self, plan: Plan, steps: int | None = None, *,
                 test: bool = True) -> tuple[Measurement, nn.Module]:
        """Build, fine-tune and measure ``plan``.

        Args:
            plan: what to build.
            steps: fine-tune steps (default: the evaluator's ``finetune.steps``); promotion
                passes a longer fine-tune here.
            test: also measure the test accuracy (NaN otherwise: a search measures it only for
                the trials that reach its front, ``test_accuracy`` on demand).

        Returns:
            The measurements and the fine-tuned compressed model.

        Raises:
            TrainingDiverged: the fine-tune produced a NaN or infinite loss.
        """
        start = time.perf_counter()
        config = self.finetune if steps is None else replace(self.finetune, steps=steps)
        model = self.build(plan)
        built = time.perf_counter()
        orthogonal = self._orthogonal(model, plan) if config.steps > 0 else None
        if config.steps > 0:
            train(model, self.data.train, config, self.device, teacher=self.teacher,
                  runtime=self.runtime, regulariser=orthogonal)
        result = self._measure(model, start, config.steps,
                               (built - start, time.perf_counter() - built), test)
        result = replace(result, **self._methods_used(plan, orthogonal is not None))
        logger.debug("plan %s -> %s", plan.summary(), result)
        return result, model


OBJECTIVE_EXAMPLES = 1000
"""Validation images the local selection scores each candidate on (a fixed subset: speed).

Candidates are compared on the same images, so the subset's size matters less than its noise
suggests: ``benchmarks/results/local_selection_cpu.md`` has 2000 and 1000 images choosing the
same plans, the smaller subset about twice as fast (ResNet-20: most of a ladder trial)."""


class ValidationLoss:
    """A model's mean cross-entropy on a fixed validation subset (``OBJECTIVE_EXAMPLES``).

    Calling it scores a model; ``tracking`` scores one model again and again while a few of
    its layers change, recomputing only what depends on them (``IncrementalForward``).
    """

    def __init__(self, data: DataSplits, device: torch.device,
                 examples: int = OBJECTIVE_EXAMPLES) -> None:
        self.device = device
        self.inputs, self.labels = next(batches(data.val, examples,
                                                torch.Generator().manual_seed(0), device=device))

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> float:
        # fp32 on purpose: local selection compares candidates whose losses differ by little.
        model.to(self.device).eval()
        return float(functional.cross_entropy(model(self.inputs), self.labels))

    def tracking(self, model: nn.Module) -> Tracked:
        """``model`` followed through weight changes: ``set_weight(name, w)`` then ``loss()``
        recomputes only what the written layers feed (``IncrementalForward``; BatchNorm
        folded, so equal to calling this object on the written model to rounding)."""
        return Tracked(IncrementalForward(model.to(self.device), self.inputs), self.labels)


@dataclass(frozen=True)
class Tracked:
    """The validation loss of one model whose layers get new weights (``tracking``)."""

    forward: IncrementalForward
    labels: torch.Tensor

    def set_weight(self, name: str, weight: torch.Tensor) -> None:
        self.forward.set_weight(name, weight)

    @torch.no_grad()
    def loss(self) -> float:
        return float(functional.cross_entropy(self.forward(), self.labels))


def validation_loss(data: DataSplits, device: torch.device,
                    examples: int = OBJECTIVE_EXAMPLES) -> ValidationLoss:
    """A function returning a model's mean cross-entropy on a fixed validation subset."""
    return ValidationLoss(data, device, examples)
