"""The Python API with objects: a trained ``nn.Module`` or a factory, and torch datasets, end to
end (reports, exports taking raw 0–255 images, one log line per trial), and its one-line
refusals."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import lpsd_search
from lpsd_search.data.splits import DataSplits, ImageTensorDataset
from lpsd_search.errors import UserInputError
from lpsd_search.models.zoo import digits_cnn
from lpsd_search.plan.measure import measure

EXAMPLE = torch.zeros(1, 1, 8, 8)


def _uint8_datasets(digits: DataSplits) -> tuple[TensorDataset, ...]:
    """The digits' own splits as 8-bit images (0..16 × 15 = 0..240)."""
    parts = []
    for part in (digits.train, digits.val, digits.test):
        assert isinstance(part, ImageTensorDataset)
        parts.append(TensorDataset((part.images * 15).to(torch.uint8), part.labels))
    return tuple(parts)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def module_search(digits: DataSplits, digits_model: nn.Module,
                  tmp_path_factory: pytest.TempPathFactory):
    datasets = _uint8_datasets(digits)
    before = {k: v.clone() for k, v in digits_model.state_dict().items()}
    lines = _Lines()
    progress = logging.getLogger("lpsd_search.progress")
    progress.addHandler(lines)
    level = progress.level
    progress.setLevel(logging.INFO)
    try:
        result = lpsd_search.search(digits_model, datasets, budget=0.6, trials=2,
                                    finetune_steps=30, promote_steps=0, warm_starts="uniform",
                                    precision="fp32", device="cpu",
                                    out=tmp_path_factory.mktemp("api") / "run")
    finally:
        progress.removeHandler(lines)
        progress.setLevel(level)
    unchanged = all(torch.equal(before[k], v) for k, v in digits_model.state_dict().items())
    return result, datasets, lines.lines, unchanged


def test_a_module_and_datasets_search_writes_what_the_cli_writes(module_search) -> None:
    result, _, lines, unchanged = module_search
    for name in ("pareto.json", "trials.csv", "study.db", "pareto.png", "report.html"):
        assert (result.out / name).is_file(), name
    assert result.document["config"]["model"].startswith("python:")
    assert result.document["config"]["data"].startswith("python:TensorDataset@")
    assert result.document["baseline"]["accuracy"] > 0.9  # the module's own weights
    assert unchanged  # the caller's module is copied, never trained or moved
    assert [line.split(" (")[0] for line in lines] == ["trial 0 complete", "trial 1 complete"]


def test_its_exports_take_raw_0_to_255_images(module_search, tmp_path: Path) -> None:
    result, datasets, _, _ = module_search
    point = max(result.pareto, key=lambda p: p["accuracy"])
    pt, pt2 = result.export(point["trial"], tmp_path / "best.pt")
    raw, labels = datasets[2].tensors[0].float(), datasets[2].tensors[1]
    assert float(raw.max()) == 240.0
    model = lpsd_search.load(pt, model_factory=lambda: digits_cnn(1, 10, (8, 8)))
    program = torch.export.load(str(pt2)).module()
    with torch.no_grad():
        scores = [float((m(raw).argmax(1) == labels).float().mean()) for m in (model, program)]
    assert scores[0] == scores[1]
    assert abs(scores[0] - point["test_accuracy"]) <= 0.005
    assert measure(model, EXAMPLE).params == point["params"]


def test_a_saved_module_needs_its_factory_to_load(module_search, tmp_path: Path) -> None:
    result, _, _, _ = module_search
    saved = next((result.out / "models").glob("trial-*.pt"))
    with pytest.raises(UserInputError) as error:
        lpsd_search.load(saved)
    assert "\n" not in str(error.value) and "model_factory=" in str(error.value)


def test_a_module_at_chance_level_stops_the_search(digits_model: nn.Module,
                                                   tmp_path: Path) -> None:
    guesser = digits_cnn(1, 10, (8, 8))
    nn.init.zeros_(guesser.fc.weight)
    nn.init.zeros_(guesser.fc.bias)  # the same logits for every image: always class 0
    with pytest.raises(UserInputError) as error:
        lpsd_search.search(guesser, "digits", budget=0.5, trials=1, out=tmp_path / "x")
    message = str(error.value)
    assert "\n" not in message and "no better than chance" in message
    assert "valid: a module trained on these data" in message


def test_objects_need_one_worker(digits_model: nn.Module, tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="workers=2 needs the model and data as spec"):
        lpsd_search.search(digits_model, "digits", budget=0.5, workers=2, out=tmp_path / "x")


def test_bad_data_objects_are_one_line(digits_model: nn.Module, tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="data int is invalid; valid: a spec string"):
        lpsd_search.search(digits_model, 3, budget=0.5, out=tmp_path / "x")  # type: ignore
    flat = TensorDataset(torch.zeros(20, 64), torch.arange(20) % 2)
    with pytest.raises(UserInputError, match=r"yields \(64,\), not \(C×H×W tensor, label\)"):
        lpsd_search.search(digits_model, flat, budget=0.5, out=tmp_path / "y")


def test_compress_takes_a_factory_and_its_model_loads(digits: DataSplits, cache_dir: Path,
                                                      tmp_path: Path) -> None:
    result = lpsd_search.compress(digits_cnn, "digits", budget=0.3, method="lowrank",
                                  finetune_steps=20, train_epochs=8, precision="fp32",
                                  cache_dir=cache_dir, device="cpu", out=tmp_path / "c")
    text = (tmp_path / "c" / "plan.json").read_text()
    document = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in plan.json"))
    assert document == result.document and document["model_file"] == "model.pt"
    model = result.load()
    assert measure(model, EXAMPLE).params == document["compressed"]["params"]
    test = digits.test
    assert isinstance(test, ImageTensorDataset)
    with torch.no_grad():
        score = float((model(test.images).argmax(1) == test.labels).float().mean())
    assert abs(score - document["compressed"]["test_accuracy"]) <= 0.005
    written = result.export(tmp_path / "m.pt")
    assert [p.suffix for p in written] == [".pt", ".pt2"]
