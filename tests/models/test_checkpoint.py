"""Tests for lpsd_search.models.checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from lpsd_search.errors import UserInputError
from lpsd_search.models.checkpoint import load_checkpoint, load_weights, save_checkpoint
from lpsd_search.models.zoo import build_model


def _digits_cnn(num_classes: int = 10) -> nn.Module:
    return build_model("digits-cnn", in_channels=1, num_classes=num_classes, input_size=(8, 8))


def _trained_looking(model: nn.Module) -> nn.Module:
    """Non-default weights and BN statistics, so a round trip is not trivially equal."""
    torch.manual_seed(1)
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 1, 8, 8))
    return model.eval()


def test_round_trip(tmp_path: Path) -> None:
    model = _trained_looking(_digits_cnn())
    path = tmp_path / "runs" / "a" / "model.pt"
    meta: dict[str, Any] = {"val_accuracy": 0.97, "ranks": (4, 8), "plan": {"conv2": "tucker2"}}
    save_checkpoint(path, model, model_spec="digits-cnn", data_spec="digits", meta=meta)
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left behind
    checkpoint = load_checkpoint(path)
    assert checkpoint["format"] == "lpsd-search-checkpoint" and checkpoint["version"] == 1
    assert (checkpoint["model_spec"], checkpoint["data_spec"]) == ("digits-cnn", "digits")
    assert checkpoint["meta"] == {
        "val_accuracy": 0.97,
        "ranks": [4, 8],
        "plan": {"conv2": "tucker2"},
    }
    fresh = _digits_cnn().eval()
    load_weights(fresh, checkpoint)
    inputs = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fresh(inputs), model(inputs), rtol=0, atol=0)
    assert fresh.state_dict()["bn1.num_batches_tracked"].item() == 1


def test_meta_must_be_plain_json(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    with pytest.raises(TypeError, match="plain JSON"):
        save_checkpoint(path, _digits_cnn(), model_spec="m", data_spec="d", meta={"x": object()})
    assert not path.exists()


def test_failed_save_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.pt"
    save_checkpoint(path, _digits_cnn(), model_spec="old", data_spec="d", meta={})

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _digits_cnn(), model_spec="new", data_spec="d", meta={})
    assert load_checkpoint(path)["model_spec"] == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_raw_state_dict_is_wrapped(tmp_path: Path) -> None:
    model = _trained_looking(_digits_cnn())
    torch.save(model.state_dict(), tmp_path / "raw.pt")
    checkpoint = load_checkpoint(tmp_path / "raw.pt")
    assert checkpoint["model_spec"] is None and checkpoint["meta"] == {}
    assert len(checkpoint["state_dict"]) == len(model.state_dict()) == 20
    fresh = _digits_cnn()
    load_weights(fresh, checkpoint["state_dict"])  # a bare state_dict is accepted too
    torch.testing.assert_close(fresh.state_dict()["fc.weight"], model.state_dict()["fc.weight"])


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "no such file"),
        (b"\x00garbage\xff" * 10, "not a readable torch file"),
        ([1, 2, 3], "holds a list, not an lpsd-search checkpoint"),
        (
            {"format": "lpsd-search-checkpoint", "version": 2},
            "checkpoint version 2 is not supported",
        ),
        ({"format": "lpsd-search-checkpoint", "version": 1}, "its 'state_dict' entry is missing"),
        (nn.Linear(2, 2), r"holds objects other than .* \(torch.nn.modules.linear.Linear\)"),
    ],
)
def test_unreadable_checkpoints(tmp_path: Path, content: object, reason: str) -> None:
    path = tmp_path / "x.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(
        UserInputError, match=f"cannot read checkpoint '.*x.pt': {reason}"
    ) as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value)


def test_truncated_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    save_checkpoint(path, _digits_cnn(), model_spec="digits-cnn", data_spec="digits", meta={})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserInputError, match="not a readable torch file"):
        load_checkpoint(path)


def test_load_weights_mismatches() -> None:
    checkpoint = {"format": "lpsd-search-checkpoint", "state_dict": _digits_cnn(10).state_dict()}
    with pytest.raises(UserInputError, match=r"'fc.weight' has shape \(10, 256\) .* \(5, 256\)"):
        load_weights(_digits_cnn(5), checkpoint)
    partial = dict(_digits_cnn().state_dict())
    del partial["conv3.weight"]
    with pytest.raises(UserInputError, match=r"lacks 'conv3\.weight' \(1 missing, 0 unexpected"):
        load_weights(_digits_cnn(), partial)
    partial = {**_digits_cnn().state_dict(), "extra.weight": torch.zeros(1)}
    with pytest.raises(UserInputError, match=r"unexpected tensor 'extra\.weight'"):
        load_weights(_digits_cnn(), partial)
