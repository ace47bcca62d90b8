"""ADMM training towards a plan's ranks: the weights move into the rank set over the steps, the
decomposition then loses little, and trials of one target family share one trained model."""

from __future__ import annotations

import copy

import pytest
import torch

from lpsd_search.config import TrainConfig
from lpsd_search.decompositions.base import get_method
from lpsd_search.decompositions.geometry import LayerGeometry
from lpsd_search.plan.apply import apply_plan
from lpsd_search.plan.choices import LayerChoice, Plan
from lpsd_search.trial.admm import (
    AdmmCache,
    AdmmRegulariser,
    admm_targets,
    grid_rank,
    project,
    target_family,
)
from lpsd_search.trial.evaluate import Evaluator
from lpsd_search.trial.train import accuracy, train

CPU = torch.device("cpu")


def _choice(model: torch.nn.Module, name: str, method: str, fraction: float) -> LayerChoice:
    layer = dict(model.named_modules())[name]
    return LayerChoice(method, get_method(method).resolve_rank(LayerGeometry.of(layer), fraction))


def test_ranks_are_rounded_down_onto_the_grid():
    assert [grid_rank(r) for r in (1, 2, 3, 4, 5, 7, 8, 12, 16, 31, 32)] == [
        1, 2, 2, 4, 4, 5, 8, 11, 16, 22, 32]
    assert grid_rank((16, 7, 1)) == (16, 5, 1)


def test_targets_are_the_projectable_low_rank_layers():
    plan = Plan({"a": LayerChoice("tt", (6, 12)), "b": LayerChoice("cp", 4),
                 "c": LayerChoice("svd", 3, sparsity=0.1), "d": LayerChoice("svd", 12),
                 "e": LayerChoice()})
    targets = admm_targets(plan)
    assert targets == {"a": LayerChoice("tt", (5, 11)), "d": LayerChoice("svd", 11)}
    same = admm_targets(Plan({"a": LayerChoice("tt", (7, 14)), "d": LayerChoice("svd", 13)}))
    assert target_family(same) == target_family(targets)


def test_projection_lands_in_the_rank_set(digits_model):
    layer = digits_model.conv3
    geom = LayerGeometry.of(layer)
    for choice in (LayerChoice("tt", (2, 8, 8, 2)), LayerChoice("tucker2", (8, 6)),
                   LayerChoice("svd", 5)):
        projected = project(layer.weight, choice, geom)
        assert projected.shape == layer.weight.shape
        torch.testing.assert_close(project(projected, choice, geom), projected,
                                   rtol=1e-4, atol=1e-5)
    # A plain SVD projection has the truncated rank.
    matrix = project(layer.weight, LayerChoice("svd", 5), geom).reshape(64, -1)
    assert int(torch.linalg.matrix_rank(matrix, rtol=1e-5)) == 5


@pytest.mark.parametrize(("method", "fraction"), [("tt", 0.2), ("tucker2", 0.2), ("svd", 0.2)])
def test_admm_drives_the_distance_to_the_rank_set_down(digits, digits_model, method, fraction):
    model = copy.deepcopy(digits_model)
    targets = {name: _choice(model, name, method, fraction) for name in ("conv2", "conv3")}
    regulariser = AdmmRegulariser(model, targets, rho=0.1, growth=1.5, every=15)
    distances = [regulariser.distance()]
    update = regulariser.dual_update

    def recorded() -> None:
        update()
        distances.append(regulariser.distance())

    regulariser.dual_update = recorded  # type: ignore[method-assign]
    train(model, digits.train, TrainConfig(steps=150), CPU, regulariser=regulariser)
    assert len(distances) == 11
    assert distances[0] > 0.3  # the trained weights are far from rank 20 % …
    assert distances[-1] < 0.25 * distances[0]  # … and ADMM brings them close
    assert distances[-1] < distances[5] < distances[1]  # steadily, not in one jump
    assert regulariser.rho == pytest.approx(0.1 * 1.5**10)


def test_admm_before_decomposing_loses_less_accuracy(digits, digits_model):
    plan = Plan({name: _choice(digits_model, name, "tt", 0.2) for name in ("conv2", "conv3")})
    direct = Evaluator(digits_model, digits, TrainConfig(steps=0), CPU)
    with_admm = Evaluator(digits_model, digits, TrainConfig(steps=0, admm_steps=150), CPU)
    before = [p.detach().clone() for p in digits_model.parameters()]
    plain = accuracy(direct.build(plan), digits.val, CPU)
    admm = accuracy(with_admm.build(plan), digits.val, CPU)
    assert admm > plain + 0.2
    assert all(torch.equal(a, b) for a, b in zip(before, digits_model.parameters(), strict=True))


def test_trials_of_one_family_share_one_admm_model(digits, digits_model):
    config = TrainConfig(steps=5, admm_steps=20, admm_rho=0.5, admm_rho_growth=1.2)
    evaluator = Evaluator(digits_model, digits, config, CPU)
    first = Plan({"conv3": LayerChoice("tucker2", (16, 8))})
    second = Plan({"conv3": LayerChoice("tucker2", (17, 9))})  # the same (16, 8) on the grid
    third = Plan({"conv3": LayerChoice("tucker2", (32, 8))})
    measured, _ = evaluator.evaluate(first, test=False)
    evaluator.evaluate(second, test=False)
    assert (evaluator.admm_cache.misses, evaluator.admm_cache.hits) == (1, 1)
    evaluator.evaluate(third, test=False)
    assert evaluator.admm_cache.misses == 2
    assert (measured.admm_steps, measured.admm_rho, measured.admm_rho_growth) == (20, 0.5, 1.2)
    # A plan ADMM has nothing to constrain in is built from the dense model and says so.
    dense, _ = evaluator.evaluate(Plan({"conv3": LayerChoice("cp", 4)}), test=False)
    assert dense.admm_steps == 0 and evaluator.admm_cache.misses == 2


def test_the_cache_keeps_the_latest_families():
    cache = AdmmCache(size=2)
    made: list[int] = []

    def make(key: int) -> torch.nn.Module:
        made.append(key)
        return torch.nn.Linear(1, 1)

    for key in (1, 2, 1, 3, 2, 1):
        cache.get_or_train(key, lambda key=key: make(key))
    assert made == [1, 2, 3, 2, 1]


def test_the_decomposed_model_is_the_admm_model_s(digits, digits_model):
    plan = Plan({"conv3": LayerChoice("svd", 8)})
    evaluator = Evaluator(digits_model, digits, TrainConfig(steps=0, admm_steps=10), CPU)
    dense = evaluator.dense_for(plan)
    assert dense is not evaluator.model and dense is evaluator.dense_for(plan)
    built = evaluator.build(plan)
    torch.testing.assert_close(built.fc.weight, dense.fc.weight)  # undecomposed layers too
    assert not torch.equal(dense.fc.weight, digits_model.fc.weight)
    expected = apply_plan(dense, plan)
    torch.testing.assert_close(built.conv3[1].weight, expected.conv3[1].weight)
