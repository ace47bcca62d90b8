"""A whole search from Python: digits, the small CNN, at most 30 % of its parameters.

Run: ``python examples/search_from_python.py`` (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import logging
from pathlib import Path

from lpsd_search.controller import SearchConfig
from lpsd_search.pipeline import SearchOptions, search
from lpsd_search.report import print_front
from lpsd_search.train import TrainConfig


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    options = SearchOptions(
        model="digits-cnn",
        data="digits",
        budget="0.3",
        out=Path("runs/example-digits"),
        finetune=TrainConfig(steps=150, lr=3e-3),
        search=SearchConfig(trials=12, seed=1),
    )
    document = search(options)
    print_front(document)
    best = max(document["points"], key=lambda point: point["accuracy"])
    print(f"best point: trial {best['trial']}, {best['compression']:.1f}x smaller, "
          f"validation accuracy {best['accuracy']:.2%}")


if __name__ == "__main__":
    main()
