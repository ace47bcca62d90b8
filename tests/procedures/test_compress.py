"""Whole-model Sparsification / ALPSD / low-rank allocation, and the ``compress`` command."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from torch import nn

from lpsd_search.cli.main import main
from lpsd_search.config import CompressConfig
from lpsd_search.errors import UserInputError
from lpsd_search.lpsd.sparse import masked_weights
from lpsd_search.plan.apply import apply_plan
from lpsd_search.plan.budget import parse_budget
from lpsd_search.plan.choices import Plan
from lpsd_search.plan.measure import measure
from lpsd_search.procedures.allocation import Candidate, balanced_ranks, ladder
from lpsd_search.procedures.compress import compress_model
from lpsd_search.procedures.scoring import TrackingObjective
from lpsd_search.trial.evaluate import ValidationLoss
from lpsd_search.trial.train import accuracy

EXAMPLE = torch.zeros(1, 1, 8, 8)


def test_ladder_errors_fall_as_ranks_grow(digits_model):
    rungs = ladder(digits_model.conv3, "svd")
    assert [r.params for r in rungs] == sorted(r.params for r in rungs)
    errors = [r.error for r in rungs]
    assert all(b <= a + 1e-6 for a, b in itertools.pairwise(errors))
    # The top rung costs about the dense layer, which for svd is below full rank (64).
    assert rungs[-1].params <= 64 * 32 * 9 < rungs[-1].params + 32 * 9 + 64
    assert errors[-1] < 0.5 * errors[0]


def test_balanced_ranks_minimise_the_worst_error_within_the_budget():
    ladders = {
        "a": [Candidate(1, 10, 0.9), Candidate(2, 20, 0.5), Candidate(3, 30, 0.1)],
        "b": [Candidate(1, 10, 0.6), Candidate(2, 20, 0.2), Candidate(3, 30, 0.05)],
    }
    chosen = balanced_ranks(ladders, 40)
    assert {n: c.rank for n, c in chosen.items()} == {"a": 2, "b": 2}  # worst error 0.5
    assert sum(c.params for c in balanced_ranks(ladders, 50).values()) <= 50
    with pytest.raises(UserInputError, match="needs at least 20 params"):
        balanced_ranks(ladders, 19)


@pytest.mark.parametrize("procedure", ["lowrank", "lpsd", "alpsd"])
def test_procedures_meet_the_budget_and_rebuild_exactly(procedure, digits_model):
    budget = parse_budget("0.2").resolve(measure(digits_model, EXAMPLE).params)
    result = compress_model(digits_model, EXAMPLE, budget,
                            CompressConfig(procedure=procedure, low_rank="svd"))
    built = apply_plan(digits_model, result.plan)
    size = measure(built, EXAMPLE)
    assert size.params <= budget.limit
    assert size.params >= 0.9 * budget.limit  # the budget is used, not wasted
    sparse = masked_weights(built)
    if procedure == "lowrank":
        assert sparse == []
    else:
        assert sum(int(mask.sum()) for _, mask in sparse) > 0
    # The plan is plain JSON and rebuilds the same model.
    again = apply_plan(digits_model, Plan.from_dict(json.loads(json.dumps(
        result.plan.to_dict()))))
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x), built.eval()(x))


def test_sparse_parts_recover_accuracy_before_any_fine_tune(digits, digits_model):
    """The LPSD premise, measured: at 5x compression, L + S keeps far more accuracy than L."""
    budget = parse_budget("0.2").resolve(measure(digits_model, EXAMPLE).params)
    inputs, labels = digits.val.tensors()

    def val_loss(model: nn.Module) -> float:
        with torch.no_grad():
            return float(nn.functional.cross_entropy(model.eval()(inputs), labels))

    scores = {}
    for procedure in ("lowrank", "lpsd", "alpsd"):
        result = compress_model(digits_model, EXAMPLE, budget,
                                CompressConfig(procedure=procedure, low_rank="svd"),
                                objective=val_loss)
        model = apply_plan(digits_model, result.plan)
        scores[procedure] = accuracy(model, digits.val, torch.device("cpu"))
        if procedure == "alpsd":
            assert result.objective == pytest.approx(val_loss(model), rel=1e-5)
    # Measured (validation accuracy, no fine-tune): lowrank 0.14, lpsd 0.34, alpsd 0.83 on the
    # baseline of training recipe 1; 0.18, 0.24, 0.77 on recipe 2's (same epochs and seed, its
    # batches drawn in another order). The order holds on both, by less for lpsd on the second.
    assert scores["lpsd"] > scores["lowrank"] + 0.05
    assert scores["alpsd"] > scores["lpsd"] + 0.2


@pytest.mark.parametrize("method", ["svd", "alds", "tucker2", "cp", "tt"])
def test_local_selection_scores_the_model_apply_plan_builds(method):
    # The objective scores one dense copy carrying L + S as weights; it must be the model the
    # plan rebuilds (strided, dilated, grouped convolutions and a linear layer included).
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=2, dilation=2, groups=2), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.Flatten(), nn.Linear(32 * 4 * 4, 10)).eval()
    example = torch.zeros(1, 3, 8, 8)
    inputs = torch.randn(64, 3, 8, 8)

    def val_loss(candidate: nn.Module) -> float:  # any objective; this one moves with every weight
        with torch.no_grad():
            return float(candidate.eval()(inputs).square().mean())

    budget = parse_budget("0.3").resolve(measure(model, example).params)
    result = compress_model(model, example, budget,
                            CompressConfig(procedure="alpsd", low_rank=method),
                            objective=val_loss)
    assert any(choice.sparsity for choice in result.plan.layers.values())
    assert result.objective == pytest.approx(val_loss(apply_plan(model, result.plan)), rel=1e-5)


def test_unreachable_budget_is_a_clear_error(digits_model):
    budget = parse_budget("50").resolve(measure(digits_model, EXAMPLE).params)
    with pytest.raises(UserInputError, match="valid: a larger budget"):
        compress_model(digits_model, EXAMPLE, budget, CompressConfig(low_rank="svd"))


def test_compress_command_writes_a_plan(tmp_path, cache_dir, digits_model):
    out = tmp_path / "alpsd"
    assert main(["-q", "compress", "--method", "alpsd", "--budget", "0.25", "--low-rank", "svd",
                 "--finetune-steps", "30", "--train-epochs", "8", "--cache-dir", str(cache_dir),
                 "--out", str(out)]) == 0
    document = json.loads((out / "plan.json").read_text())
    compressed = document["compressed"]
    assert compressed["params"] <= document["budget"]["limit"]
    assert compressed["compression"] >= 4.0
    assert any(choice.get("alternating") for choice in document["plan"].values())
    rebuilt = measure(apply_plan(digits_model, Plan.from_dict(document["plan"])), EXAMPLE)
    assert rebuilt.params == compressed["params"]
    assert rebuilt.bytes == compressed["bytes"]


@pytest.mark.parametrize(("args", "message"), [
    (["--method", "magic"], "invalid choice: 'magic'"),
    (["--low-rank", "magic"], "unknown decomposition method 'magic'"),
    (["--sparse-share", "1.5"], "--sparse-share: '1.5' is too large; valid: below 1"),
])
def test_compress_bad_input_is_one_line(args, message, tmp_path, capsys):
    try:
        code = main(["compress", "--budget", "0.1", "--out", str(tmp_path), *args])
    except SystemExit as stop:
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert message in err


def test_tracked_validation_loss_makes_the_same_plan_as_whole_passes(digits, digits_model):
    # The validation loss follows the scored copy incrementally (BatchNorm folded, only what
    # the changed layers feed recomputed); ALPSD must choose exactly what whole passes choose.
    loss = ValidationLoss(digits, torch.device("cpu"))
    assert isinstance(loss, TrackingObjective)
    budget = parse_budget("0.15").resolve(measure(digits_model, EXAMPLE).params)
    config = CompressConfig(procedure="alpsd", low_rank="svd", local_passes=2)
    tracked = compress_model(digits_model, EXAMPLE, budget, config, objective=loss)
    whole = compress_model(digits_model, EXAMPLE, budget, config,
                           objective=lambda model: loss(model))
    assert tracked.moves and tracked.moves == whole.moves
    assert tracked.plan == whole.plan
    assert tracked.objective == pytest.approx(whole.objective, rel=1e-5)
    assert tracked.objective == pytest.approx(loss(apply_plan(digits_model, tracked.plan)),
                                              rel=1e-5)
