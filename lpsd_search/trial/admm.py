"""ADMM training of the dense model towards a plan's ranks, before it is decomposed.

Yin et al. (CVPR 2021) compress with tensor trains by first solving

    min_W  loss(W)   subject to   W_l ∈ C_l  (kernels of TT rank ≤ r_l)

with ADMM in its scaled form: the model keeps its dense structure and is trained on
``loss(W) + ρ/2·Σ_l ‖W_l − Z_l + U_l‖²``, and every so often ``Z_l ← Π_l(W_l + U_l)`` (the
projection onto the rank set), ``U_l ← U_l + W_l − Z_l`` (the scaled dual) and ``ρ ← ρ·growth``.
The weights drift into the rank set, so decomposing them afterwards loses little; the compressed
model is then fine-tuned as usual. The same works for every method whose truncation is a
(quasi-optimal) projection: ``tt`` (TT-SVD), ``tucker2`` (HOSVD/HOOI), ``svd`` and ``alds``
(truncated SVDs); CP has no such projection, and a layer with a sparse residual is not
constrained (its residual takes up what the low-rank part misses).

ADMM costs ``admm_steps`` steps of the dense model, so trials share it: a plan's *target family*
is its constrained layers with their methods and ranks rounded down onto a grid of ratio
``RANK_GRID``, and ``AdmmCache`` keeps the models trained for the last few families. A trial
then decomposes a model trained towards ranks at most its own (and above ``1/RANK_GRID`` of
them), where the truncation is nearly lossless.

The default schedule (``config.METHOD_DEFAULTS``: ρ from 0.1, ×1.5 at each of the
``DUAL_UPDATES``, ending near 6) comes from digits-cnn with TT at 20 % of conv2/conv3: over 300
steps, ρ from 0.001 (×2 per update) left the weights far from the rank set (relative distance
0.85 → 0.52, the decomposed model at chance), ρ from 0.1 brought them in (0.85 → 0.07, accuracy
as decomposed 23 % → 98 % against 99 % dense). Early dual updates need a ρ that already matters:
the fine-tune's learning rate decays over the same steps, so a penalty that only grows strong at
the end no longer moves the weights.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import replace

import torch
from torch import nn
from torch.utils.data import Dataset

from lpsd_search.config import TrainConfig
from lpsd_search.decompositions.base import Rank, get_method
from lpsd_search.decompositions.geometry import LayerGeometry
from lpsd_search.plan.choices import LayerChoice, Plan
from lpsd_search.trial.runtime import Runtime, fp32_decompositions
from lpsd_search.trial.train import train

logger = logging.getLogger(__name__)

PROJECTED = ("svd", "alds", "tucker2", "tt")
"""Methods whose layers ADMM constrains (their truncation is a projection)."""
DUAL_UPDATES = 10
"""Projections and dual updates over the ADMM steps (the paper's per-epoch updates)."""
RANK_GRID = 2**0.5
"""Ratio of the rank grid that target families are rounded down onto."""
CACHE_SIZE = 4
"""ADMM-trained dense models an evaluator keeps."""


def grid_rank(rank: Rank) -> Rank:
    """``rank`` (each entry of a tuple) rounded down onto the grid ``RANK_GRID**k``.

    Example:
        >>> grid_rank(12), grid_rank((16, 7))
        (11, (16, 5))
    """
    if isinstance(rank, tuple):
        return tuple(_on_grid(value) for value in rank)
    return _on_grid(rank)


def _on_grid(value: int) -> int:
    # The epsilons keep exact grid points (16 = √2⁸) on themselves despite rounding.
    step = math.floor(math.log(value, RANK_GRID) + 1e-9)
    return max(1, math.floor(RANK_GRID**step + 1e-9))


def admm_targets(plan: Plan) -> dict[str, LayerChoice]:
    """The layers ADMM constrains, each with the rank it trains towards (``grid_rank``)."""
    return {name: replace(choice, rank=grid_rank(choice.rank))
            for name, choice in plan.compressed().items()
            if choice.method in PROJECTED and not choice.sparsity and choice.rank is not None}


def target_family(targets: dict[str, LayerChoice]) -> Hashable:
    """The cache key of the targets: trials with equal keys train the same ADMM model."""
    return tuple(sorted((name, choice.method, choice.rank, choice.options)
                        for name, choice in targets.items()))


@torch.no_grad()
def project(weight: torch.Tensor, choice: LayerChoice, geom: LayerGeometry) -> torch.Tensor:
    """``weight`` projected onto the kernels ``choice`` can represent (its method and rank).

    The method's own factorisation and reconstruction: TT-SVD for tt, HOOI for tucker2,
    truncated SVDs for svd and alds.
    """
    assert choice.rank is not None  # admm_targets keeps low-rank choices only
    method = get_method(choice.method)
    options = choice.option_dict
    structural = {k: v for k, v in options.items() if k in method.structural_options}
    kernel = weight.detach().float()
    if kernel.dim() == 2:  # a Linear weight: a 1×1 kernel
        kernel = kernel[:, :, None, None]
    with fp32_decompositions():
        factors = method.factorize(kernel, geom, choice.rank, **options)
        projected = method.reconstruct(factors, geom, choice.rank, **structural)
    return projected.reshape(weight.shape).to(weight.dtype)


class AdmmRegulariser:
    """The augmented-Lagrangian term ``ρ/2·Σ‖W − Z + U‖²`` and its dual updates.

    A ``trial.train.Regulariser``: ``after_step`` projects and updates the duals every
    ``every`` steps (the projections are the only work that waits for the device).

    Args:
        model: the dense model being trained (its layers named in ``targets``).
        targets: layer name → the method and rank it is constrained to.
        rho: ρ at the start.
        growth: factor applied to ρ at every dual update.
        every: steps between dual updates.
    """

    def __init__(self, model: nn.Module, targets: dict[str, LayerChoice], rho: float,
                 growth: float, every: int) -> None:
        modules = dict(model.named_modules())
        self.layers = [(modules[name].weight, choice, LayerGeometry.of(modules[name]))
                       for name, choice in targets.items()]
        self.rho, self.growth, self.every = rho, growth, max(1, every)
        self.z = [project(w, choice, geom) for w, choice, geom in self.layers]
        self.u = [torch.zeros_like(w) for w, _, _ in self.layers]

    def loss(self) -> torch.Tensor:
        terms = [(w - z + u).square().sum() for (w, _, _), z, u in
                 zip(self.layers, self.z, self.u, strict=True)]
        return 0.5 * self.rho * torch.stack(terms).sum()

    def after_step(self, step: int) -> None:
        if (step + 1) % self.every == 0:
            self.dual_update()

    @torch.no_grad()
    def dual_update(self) -> None:
        """``Z ← Π(W + U)``, ``U ← U + W − Z``, ``ρ ← ρ·growth``."""
        for index, (w, choice, geom) in enumerate(self.layers):
            self.z[index] = project(w + self.u[index], choice, geom)
            self.u[index] += w - self.z[index]
        self.rho *= self.growth

    @torch.no_grad()
    def distance(self) -> float:
        """``‖W − Π(W)‖ / ‖W‖`` over the constrained layers together: 0 inside the rank set."""
        residual = total = 0.0
        for w, choice, geom in self.layers:
            residual += float((w - project(w, choice, geom)).square().sum())
            total += float(w.square().sum())
        return math.sqrt(residual / total) if total else 0.0


def admm_train(model: nn.Module, targets: dict[str, LayerChoice], dataset: Dataset,
               config: TrainConfig, device: torch.device, runtime: Runtime | None = None,
               teacher: nn.Module | None = None) -> nn.Module:
    """A copy of the dense ``model`` trained by ADMM towards ``targets``.

    Args:
        model: the dense model (left untouched).
        targets: ``admm_targets`` of the plan.
        dataset: the training split.
        config: the fine-tune's optimiser settings; ``admm_steps``, ``admm_rho`` and
            ``admm_rho_growth`` (``method_settings``) set the ADMM schedule.
        device: where it trains.
        runtime: precision, memory format and compilation.
        teacher: the distillation teacher, as in the fine-tune.
    """
    settings = config.method_settings()
    steps = int(settings["admm_steps"])
    trained = copy.deepcopy(model)
    regulariser = AdmmRegulariser(trained, targets, settings["admm_rho"],
                                  settings["admm_rho_growth"], steps // DUAL_UPDATES)
    before = regulariser.distance()
    train(trained, dataset, replace(config, steps=steps), device, teacher=teacher,
          runtime=runtime, regulariser=regulariser)
    logger.info("ADMM: %d steps on %d layers, distance to the rank set %.3f -> %.3f", steps,
                len(targets), before, regulariser.distance())
    return trained.eval()


class AdmmCache:
    """The ADMM-trained dense models of the last ``size`` target families (thread-safe).

    A family is trained once however many threads ask for it; the models handed out are shared
    and must not be changed (``plan.apply.apply_plan`` copies what it decomposes).
    """

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self.hits = self.misses = 0
        self._models: OrderedDict[Hashable, nn.Module] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_train(self, key: Hashable, make: Callable[[], nn.Module]) -> nn.Module:
        """The model of ``key``, trained by ``make`` on a miss."""
        with self._lock:  # ADMM trainings are serialised: each fills the device on its own
            found = self._models.get(key)
            if found is not None:
                self.hits += 1
                self._models.move_to_end(key)
                return found
            self.misses += 1
            model = make()
            self._models[key] = model
            while len(self._models) > self.size:
                self._models.popitem(last=False)
            return model
