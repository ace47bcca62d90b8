"""The orthogonality penalty: zero on orthonormal factors (as every method builds them), the
closed-form gradient, and a fine-tune that keeps the factors nearer orthogonality with it."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lpsd_search.config import TrainConfig
from lpsd_search.decompositions.geometry import LayerGeometry
from lpsd_search.plan.apply import apply_plan
from lpsd_search.plan.choices import LayerChoice, Plan
from lpsd_search.trial.evaluate import Evaluator
from lpsd_search.trial.orthogonal import (
    OrthogonalRegulariser,
    layer_factors,
    orthogonality_penalty,
)


def _orthonormal_rows(batch: int, rows: int, columns: int) -> torch.Tensor:
    q = torch.linalg.qr(torch.randn(batch, columns, rows, dtype=torch.float64)).Q
    return q.transpose(1, 2)  # batch × rows × columns, orthonormal rows


def test_penalty_is_zero_for_orthonormal_factors():
    torch.manual_seed(0)
    rows = _orthonormal_rows(3, 4, 9)
    assert float(orthogonality_penalty(rows)) == pytest.approx(0.0, abs=1e-24)
    # A tall matrix cannot have orthonormal rows: its orthonormal columns count instead.
    assert float(orthogonality_penalty(rows.transpose(1, 2))) == pytest.approx(0.0, abs=1e-24)
    # Orthogonal vectors of any length (U√Σ) are orthonormal once normalised.
    scaled = rows * torch.tensor([3.0, 0.5, 2.0, 7.0], dtype=torch.float64)[None, :, None]
    assert float(orthogonality_penalty(scaled)) > 1.0
    assert float(orthogonality_penalty(scaled, scale_free=True)) == pytest.approx(0.0, abs=1e-24)


def test_penalty_is_the_squared_gram_deviation():
    matrix = torch.tensor([[[1.0, 1.0], [0.0, 1.0]]], dtype=torch.float64)
    # M·Mᵀ = [[2, 1], [1, 1]]: (2 − 1)² + 1² + 1² + (1 − 1)² = 3.
    assert float(orthogonality_penalty(matrix)) == pytest.approx(3.0)
    # Normalised rows (1, 1)/√2 and (0, 1): cosine 1/√2 twice off the diagonal.
    assert float(orthogonality_penalty(matrix, scale_free=True)) == pytest.approx(1.0)


@pytest.mark.parametrize("shape", [(2, 3, 7), (1, 6, 4), (3, 5, 5)])
def test_gradient_matches_the_closed_form_and_autograd(shape):
    torch.manual_seed(1)
    matrices = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    (gradient,) = torch.autograd.grad(orthogonality_penalty(matrices), matrices)
    m = matrices.detach()
    if shape[1] <= shape[2]:  # d/dM ‖M·Mᵀ − I‖² = 4(M·Mᵀ − I)·M
        expected = 4 * (m @ m.transpose(1, 2) - torch.eye(shape[1], dtype=m.dtype)) @ m
    else:  # d/dU ‖UᵀU − I‖² = 4·U(UᵀU − I), U = M
        expected = 4 * m @ (m.transpose(1, 2) @ m - torch.eye(shape[2], dtype=m.dtype))
    torch.testing.assert_close(gradient, expected)
    assert torch.autograd.gradcheck(lambda x: orthogonality_penalty(x), (matrices,))
    assert torch.autograd.gradcheck(lambda x: orthogonality_penalty(x, scale_free=True),
                                    (matrices,))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(8, 24, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(24, 16, 3, padding=1, groups=2), nn.Flatten(),
                         nn.Linear(16 * 4 * 4, 12))


@pytest.mark.parametrize(("method", "ranks", "factors"), [
    ("svd", (4, 3, 5), 6),
    ("alds", (3, 2, 4), 6),
    ("tucker2", ((6, 4), (5, 3), (5, 20)), 6),
    ("tt", (3, 3, 4), 11),
    ("cp", (5, 5, 5), 0),
])
def test_every_method_builds_factors_the_penalty_calls_orthogonal(method, ranks, factors):
    model = _model()
    names = ("0", "2", "4")
    modules = dict(model.named_modules())
    geometries = {name: LayerGeometry.of(modules[name]) for name in names}
    options = {"0": (("k", 2),)} if method == "alds" else {}
    plan = Plan({name: LayerChoice(method, rank, options=options.get(name, ()))
                 for name, rank in zip(names, ranks, strict=True)})
    built = apply_plan(model, plan)
    regulariser = OrthogonalRegulariser(built, plan, geometries, weight=1.0)
    assert len(regulariser.factors) == factors  # cp: none of its factors is orthogonal
    assert float(regulariser.penalty().detach()) == pytest.approx(0.0, abs=1e-9)
    if factors:
        # Moving a factor off orthogonality shows, and the gradient reaches the weight.
        factor = regulariser.factors[0]
        with torch.no_grad():
            factor.weight.add_(0.3 * torch.randn_like(factor.weight))
        loss = regulariser.loss()
        assert float(loss.detach()) > 1e-3
        loss.backward()
        assert factor.weight.grad is not None and float(factor.weight.grad.abs().sum()) > 0


def test_a_layer_with_a_sparse_residual_uses_its_low_rank_branch():
    model = _model()
    choice = LayerChoice("tucker2", (6, 4), sparsity=0.05)
    built = apply_plan(model, Plan({"0": choice}))
    found = layer_factors(built[0], choice, LayerGeometry.of(model[0]))
    assert len(found) == 2
    assert math.isclose(float(sum(f.penalty().detach() for f in found)), 0.0, abs_tol=1e-9)


def test_fine_tune_with_the_penalty_keeps_factors_nearer_orthogonal(digits, digits_model):
    plan = Plan({"conv2": LayerChoice("tucker2", (8, 4)), "conv3": LayerChoice("tucker2", (8, 8)),
                 "fc": LayerChoice("svd", 4)})
    modules = dict(digits_model.named_modules())
    geometries = {name: LayerGeometry.of(modules[name]) for name in plan.layers}
    penalties = {}
    for weight in (0.0, 1.0):
        config = TrainConfig(steps=40, orth_reg=weight)
        evaluator = Evaluator(digits_model, digits, config, torch.device("cpu"))
        measured, model = evaluator.evaluate(plan, test=False)
        assert measured.orth_reg == weight and measured.admm_steps == 0
        regulariser = OrthogonalRegulariser(model, plan, geometries, weight=1.0)
        penalties[weight] = float(regulariser.penalty().detach())
    assert penalties[1.0] < 0.5 * penalties[0.0]
