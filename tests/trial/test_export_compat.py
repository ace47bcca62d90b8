"""A model exported before the package layout changed still loads and computes the same."""

from __future__ import annotations

import json
from pathlib import Path

import torch

import lpsd_search
from lpsd_search.plan.measure import measure

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "export-v010-digits-alds-sparse"


def test_an_export_written_by_0_1_0_loads_with_its_outputs_and_size():
    # Written by `lpsd-search export` at commit 2996d9d: digits-cnn, ALDS plus sparse residuals
    # on every layer but the first (see the .json for the logits it gave then).
    expected = json.loads(FIXTURE.with_suffix(".json").read_text(encoding="utf-8"))
    model = lpsd_search.load(FIXTURE.with_suffix(".pt"))
    torch.manual_seed(expected["input_seed"])
    inputs = torch.randn(*expected["input_shape"])
    with torch.no_grad():
        logits = model(inputs)
    assert torch.allclose(logits, torch.tensor(expected["logits"]), atol=1e-5)
    assert measure(model, inputs[:1]).params == expected["params"] == 12989
