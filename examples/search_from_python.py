"""A whole search from Python: digits, the small CNN, at most 30 % of its parameters and half its
FLOPs; then the most accurate front point is exported and loaded back.

Run: ``python examples/search_from_python.py`` (one to two minutes on 2 CPU cores).
"""

from __future__ import annotations

import logging

import torch

import lpsd_search
from lpsd_search.report.summary import print_summary


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    result = lpsd_search.search("digits-cnn", "digits", budget=["0.3", "flops=0.5"],
                                space="mtd", trials=12, finetune_steps=150, seed=1,
                                out="runs/example-digits")
    print_summary(result.out)
    best = max(result.pareto, key=lambda point: point["accuracy"])
    model_file, program_file = result.export(best["trial"], "runs/example-digits/best.pt")
    model = lpsd_search.load(model_file)
    logits = model(torch.zeros(1, 1, 8, 8))
    print(f"best point: trial {best['trial']}, {best['compression']:.1f}x smaller, "
          f"validation accuracy {best['accuracy']:.2%}; {model_file} and {program_file} "
          f"written, reloaded model gives logits of shape {tuple(logits.shape)}")


if __name__ == "__main__":
    main()
