"""Every export takes raw images: ``load``'s model, the ``.pt2`` program and an ONNX file made
from either score raw digits (pixels 0–16, as scikit-learn stores them) as the report does."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pytest
import torch

import lpsd_search
from lpsd_search.cli.main import main
from lpsd_search.data.splits import DataSplits, ImageTensorDataset
from lpsd_search.trial.export import read_preprocessing


@pytest.fixture(scope="module")
def exported(cache_dir: Path, digits_model: torch.nn.Module,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("exports")
    assert main(["-q", "search", "--out", str(out / "run"), "--cache-dir", str(cache_dir),
                 "--train-epochs", "8", "--seed", "0", "--no-report", "--precision", "fp32",
                 "--budget", "0.6", "--trials", "2", "--finetune-steps", "30",
                 "--promote-steps", "0", "--warm-starts", "uniform"]) == 0
    document = json.loads((out / "run" / "pareto.json").read_text())
    point = max(document["points"], key=lambda p: p["accuracy"])
    target = out / "best.pt"
    assert main(["-q", "export", str(out / "run"), "--trial", str(point["trial"]), "--out",
                 str(target)]) == 0
    return target, point


def _raw_test_split(digits: DataSplits) -> tuple[torch.Tensor, torch.Tensor]:
    test = digits.test
    assert isinstance(test, ImageTensorDataset)
    assert float(test.images.max()) == 16.0  # the digits as stored: 0..16, not normalised
    return test.images, test.labels


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == labels).float().mean())


def test_the_file_records_the_preprocessing(exported: tuple[Path, dict],
                                            digits: DataSplits) -> None:
    record = read_preprocessing(exported[0])
    assert record is not None
    assert record["input_scale"] == 16.0 and record["input_size"] == [8, 8]
    assert record["mean"] == list(digits.preprocessing.mean)
    assert record["std"] == list(digits.preprocessing.std)


def test_raw_images_score_the_reported_accuracy_through_every_format(
        exported: tuple[Path, dict], digits: DataSplits, tmp_path: Path) -> None:
    target, point = exported
    raw, labels = _raw_test_split(digits)
    normalised, _ = digits.test.tensors()  # type: ignore[attr-defined]
    with torch.no_grad():
        bare = _accuracy(lpsd_search.load(target, preprocessing=False)(normalised), labels)
        model = lpsd_search.load(target)
        from_pt = _accuracy(model(raw), labels)
        program = torch.export.load(str(target.with_suffix(".pt2"))).module()
        from_pt2 = _accuracy(program(raw), labels)
    assert from_pt == from_pt2 == bare
    assert abs(from_pt - point["test_accuracy"]) <= 0.005
    # Raw images into the bare network score far worse: the normalisation is what was missing.
    with torch.no_grad():
        assert _accuracy(lpsd_search.load(target, preprocessing=False)(raw), labels) < from_pt

    onnx = pytest.importorskip("onnx", reason="onnx is not installed")
    runtime = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    pytest.importorskip("onnxscript", reason="torch's ONNX exporter needs onnxscript")
    path = tmp_path / "best.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (raw,), str(path))
    onnx.checker.check_model(onnx.load(str(path)))
    session = runtime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: raw.numpy()})
    assert _accuracy(torch.from_numpy(logits), labels) == from_pt


def test_a_file_from_before_the_preprocessing_loads_bare_with_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "export-v010-digits-alds-sparse"
    fixture = fixture.with_suffix(".pt")
    with caplog.at_level(logging.WARNING, logger="lpsd_search"):
        model = lpsd_search.load(fixture)
    assert not hasattr(model, "normalize")
    assert any("records no input preprocessing" in r.getMessage() for r in caplog.records)
