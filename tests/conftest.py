"""Shared fixtures: a small trained digits baseline, cached once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lpsd_search.config import BaselineConfig
from lpsd_search.data.splits import DataSplits, load_data
from lpsd_search.trial.baseline import cached_baseline


@pytest.fixture(scope="session")
def digits() -> DataSplits:
    return load_data("digits")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def digits_model(digits: DataSplits, cache_dir: Path) -> torch.nn.Module:
    """digits-cnn trained for a few epochs (enough for ~95 % accuracy, a few seconds)."""
    config = BaselineConfig(epochs=8, seed=0)
    return cached_baseline("digits-cnn", digits, config, torch.device("cpu"), cache_dir)
