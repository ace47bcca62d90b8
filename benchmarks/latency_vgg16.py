"""CPU inference latency of CIFAR VGG16: dense vs lpsd-search Tucker-2 vs tltorch (same ranks).

Every Conv2d that Tucker-2 can shrink gets ranks from lpsd-search's ``rank_for_params`` at
``--ratio`` (default 0.1, about 10x fewer params per layer). The models:

* dense: the VGG16 itself,
* ours: ``lpsd_search.plan.apply_plan`` with ``LayerChoice("tucker2", rank)`` per layer (plain
  ``nn.Conv2d`` chains),
* tltorch: ``FactorizedConv.from_conv(..., factorization="tucker", rank=(r_out, r_in, 3, 3))``
  with its ``factorized`` forward (three convolutions) and its ``reconstructed`` forward (the
  kernel rebuilt on every call, then one dense convolution).

Latency is the median of ``--runs`` forward passes per batch size under
``torch.inference_mode`` after ``--warmup`` passes. The models are timed round-robin (one pass of
each in turn) so that load from other processes falls on all of them alike.

Example:
    python benchmarks/latency_vgg16.py --width 0.25 --runs 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from bench_utils import (
    RESULTS,
    conv_layers,
    header,
    limit_threads,
    params_of,
    seconds,
    vgg16,
    write_results,
)
from torch import nn

from lpsd_search.decompositions import LayerGeometry
from lpsd_search.decompositions.base import get_method
from lpsd_search.plan.apply import apply_plan
from lpsd_search.plan.choices import LayerChoice, Plan
from lpsd_search.plan.layers import set_submodule


def tucker2_ranks(model: nn.Module, ratio: float) -> dict[str, tuple[int, int]]:
    """Tucker-2 ranks at ``ratio`` of each shrinkable conv's params."""
    tucker2 = get_method("tucker2")
    ranks: dict[str, tuple[int, int]] = {}
    for name, conv in conv_layers(model):
        geom = LayerGeometry.of(conv)
        if tucker2.supports(geom):
            out_rank, in_rank = tucker2.rank_for_params(geom, ratio * geom.dense_params)
            ranks[name] = (int(out_rank), int(in_rank))
    return ranks


def tltorch_model(model: nn.Module, ranks: dict[str, tuple[int, int]],
                  implementation: str) -> nn.Module:
    """A copy of ``model`` with tltorch Tucker convs at ``ranks``.

    The weights are not decomposed (``decompose_weights=False``): latency does not depend on
    their values, and tensorly's Tucker would take minutes on the wide layers.
    """
    import copy

    import tltorch  # imported late: it switches tensorly's global backend to pytorch

    result = copy.deepcopy(model)
    modules = dict(result.named_modules())
    for name, (out_rank, in_rank) in ranks.items():
        conv = modules[name]
        assert isinstance(conv, nn.Conv2d)
        kh, kw = conv.kernel_size
        factorized = tltorch.FactorizedConv.from_conv(
            conv, rank=(out_rank, in_rank, kh, kw), factorization="tucker",
            implementation=implementation, decompose_weights=False)
        set_submodule(result, name, factorized)
    return result.eval()


def time_round_robin(models: dict[str, nn.Module], batch: int, warmup: int,
                     runs: int) -> dict[str, list[float]]:
    """Per-model forward times at ``batch``, one pass of each model per round."""
    torch.manual_seed(0)
    inputs = torch.randn(batch, 3, 32, 32)
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for _ in range(warmup):
            for model in models.values():
                model(inputs)
        for _ in range(runs):
            for name, model in models.items():
                start = time.perf_counter()
                model(inputs)
                times[name].append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=1.0, help="VGG16 width multiplier")
    parser.add_argument("--checkpoint", help="lpsd-search checkpoint of the same VGG16")
    parser.add_argument("--ratio", type=float, default=0.1,
                        help="kept fraction of each layer's params (default 0.1)")
    parser.add_argument("--batches", default="1,32", help="comma list of batch sizes")
    parser.add_argument("--runs", type=int, default=30, help="timed passes per model (>= 20)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-tltorch", action="store_true", help="skip the tltorch models")
    parser.add_argument("--output", type=Path, default=None, help="results markdown file")
    args = parser.parse_args(argv)
    threads_note = limit_threads(args.threads)
    model, weights_note = vgg16(args.width, args.checkpoint)
    ranks = tucker2_ranks(model, args.ratio)
    plan = Plan({name: LayerChoice("tucker2", rank) for name, rank in ranks.items()})
    start = time.perf_counter()
    ours = apply_plan(model, plan).eval()
    build_seconds = time.perf_counter() - start
    models = {"dense": model, "ours tucker2": ours}
    if not args.no_tltorch:
        models["tltorch tucker, factorized"] = tltorch_model(model, ranks, "factorized")
        models["tltorch tucker, reconstructed"] = tltorch_model(model, ranks, "reconstructed")
    example = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        for name, candidate in models.items():
            shape = tuple(candidate(example).shape)
            if shape != (2, 10):
                raise RuntimeError(f"{name} gives output shape {shape}")

    batches = [int(b) for b in args.batches.split(",") if b]
    medians: dict[int, dict[str, float]] = {}
    spread: dict[int, dict[str, tuple[float, float]]] = {}
    for batch in batches:
        times = time_round_robin(models, batch, args.warmup, args.runs)
        medians[batch] = {name: statistics.median(t) for name, t in times.items()}
        spread[batch] = {name: (min(t), max(t)) for name, t in times.items()}

    conv_dense = sum(params_of(m) for _, m in conv_layers(model) if _ in ranks)
    lines = header("CPU inference latency of CIFAR VGG16 (32x32 input)", threads_note, [
        ("weights", weights_note), ("width", str(args.width)),
        ("ranks", f"Tucker-2 at {args.ratio:g} of each layer's params from lpsd-search "
                  f"`rank_for_params` on {len(ranks)} convs; the same ranks for tltorch"),
        ("timing", f"median of {args.runs} passes per model after {args.warmup} warm-up "
                   "passes, models interleaved round-robin, torch.inference_mode, eval mode"),
        ("ours built in", seconds(build_seconds) + " (apply_plan, all layers)")])
    head = "| model | params | compression |"
    rule = "|---|---|---|"
    for batch in batches:
        head += f" batch {batch} median (min-max) | speed-up vs dense |"
        rule += "---|---|"
    lines += ["## Latency", "", head, rule]
    dense_params = params_of(model)
    for name, candidate in models.items():
        row = f"| {name} | {params_of(candidate):,} | {dense_params / params_of(candidate):.2f}x |"
        for batch in batches:
            low, high = spread[batch][name]
            speedup = medians[batch]["dense"] / medians[batch][name]
            row += (f" {seconds(medians[batch][name])} ({seconds(low)}-{seconds(high)}) | "
                    f"{speedup:.2f}x |" if name != "dense" else
                    f" {seconds(medians[batch][name])} ({seconds(low)}-{seconds(high)}) | 1 |")
        lines.append(row)
    compressed_convs = sum(params_of(m) for n, m in ours.named_modules()
                           if n in ranks)
    lines += ["", f"Compressed convs alone: {conv_dense:,} dense params -> {compressed_convs:,} "
              f"({conv_dense / compressed_convs:.2f}x); BatchNorm and the classifier stay dense.",
              "tltorch's models hold undecomposed (random) factors: latency does not depend on "
              "the values, and its Tucker fit is the slow part (see decompose_vgg16).", ""]
    goal = all(medians[b]["ours tucker2"] < medians[b]["dense"] for b in batches)
    lines += [f"Goal (ours tucker2 faster than dense at every batch size): "
              f"{'met' if goal else 'NOT met'}.", ""]
    output = args.output or RESULTS / (
        "latency_vgg16.md" if args.width == 1.0 else f"latency_vgg16_width{args.width}.md")
    print(write_results(output, lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
