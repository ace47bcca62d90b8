"""Whole-model decomposition time and error of CIFAR VGG16: lpsd-search vs tensorly vs tltorch.

Every Conv2d that a method can shrink is decomposed at about 10x fewer parameters (ranks from
lpsd-search's ``rank_for_params``, the same ranks for every tool) by

* ours: ``lpsd_search.decompose_layer(conv, method, rank)`` (factorisation + plain modules),
* tensorly (pytorch backend, defaults): ``partial_tucker(W, rank=[r_out, r_in], modes=[0, 1])``
  and ``parafac(W, rank=R)`` (factorisation only),
* tltorch: ``FactorizedConv.from_conv(conv, rank=..., factorization=..., decompose_weights=True)``
  (module + factorisation; its Tucker is a full 4-mode Tucker with the spatial ranks kept full).

Beside every time it reports ``‖W − Ŵ‖ / ‖W‖``. Run ``--estimate-only`` first: it times one
512×512×3×3 ``parafac`` and projects the whole run.

Example:
    python benchmarks/decompose_vgg16.py --width 0.25 --repeats 3
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tensorly as tl
import torch
from bench_utils import (
    RESULTS,
    combined_error,
    conv_layers,
    effective_kernel,
    header,
    limit_threads,
    load_average,
    median_seconds,
    params_of,
    relative_error,
    seconds,
    vgg16,
    write_results,
)
from tensorly.decomposition import parafac, partial_tucker
from torch import nn

from lpsd_search import decompose_layer
from lpsd_search.decompositions import LayerGeometry, Rank
from lpsd_search.decompositions.base import get_method

log = logging.getLogger("decompose_vgg16")
METHODS = ("tucker2", "cp")
TOOLS = ("ours", "tensorly", "tltorch")


@dataclass
class Result:
    """One (layer, method, tool) measurement."""

    seconds: float
    error: float
    params: int
    runs: int


@dataclass
class Layer:
    name: str
    conv: nn.Conv2d
    rank: Rank
    norm: float


def plan_layers(model: nn.Module, method: str, ratio: float) -> tuple[list[Layer], list[str]]:
    """The layers ``method`` can shrink, each with its rank at ``ratio`` of the dense params."""
    decomposition = get_method(method)
    kept, skipped = [], []
    for name, conv in conv_layers(model):
        geom = LayerGeometry.of(conv)
        if not decomposition.supports(geom):
            skipped.append(name)
            continue
        rank = decomposition.rank_for_params(geom, ratio * geom.dense_params)
        kept.append(Layer(name, conv, rank, float(torch.linalg.norm(conv.weight.detach()))))
    return kept, skipped


OURS_OPTIONS: dict[str, float] = {}  # --ours-option: fit options of ours (e.g. tol)


def run_ours(layer: Layer, method: str, repeats: int) -> Result:
    elapsed, module = median_seconds(
        lambda: decompose_layer(layer.conv, method, layer.rank, **OURS_OPTIONS), repeats)
    weight = layer.conv.weight.detach()
    error = relative_error(weight, effective_kernel(module, layer.conv))
    return Result(elapsed, error, params_of(module), repeats)


def _channel_ranks(rank: Rank) -> tuple[int, int]:
    if isinstance(rank, int):
        return rank, rank
    return rank[0], rank[1]


def run_tensorly(layer: Layer, method: str, repeats: int, backend: str = "pytorch") -> Result:
    weight = layer.conv.weight.detach().clone()
    data = weight if backend == "pytorch" else weight.numpy()
    with tl.backend_context(backend):
        if method == "tucker2":
            r_out, r_in = _channel_ranks(layer.rank)

            def fit() -> object:
                return partial_tucker(data, rank=[r_out, r_in], modes=[0, 1])

            elapsed, ((core, factors), _) = median_seconds(fit, repeats)
            approx = tl.tenalg.multi_mode_dot(core, factors, modes=[0, 1])
            geom = LayerGeometry.of(layer.conv)
            params = int(core.size if backend == "numpy" else core.numel()) + (
                geom.out_channels * r_out + geom.in_channels * r_in + geom.bias_params)
        else:
            elapsed, cp = median_seconds(lambda: parafac(data, rank=int(layer.rank)), repeats)
            approx = tl.cp_to_tensor(cp)
            # The weights vector folds into a factor, as in our CP.
            params = sum(int(f.shape[0]) for f in cp.factors) * int(layer.rank)
            params += LayerGeometry.of(layer.conv).bias_params
    approx_tensor = torch.as_tensor(approx, dtype=weight.dtype)
    return Result(elapsed, relative_error(weight, approx_tensor), params, repeats)


def run_tltorch(layer: Layer, method: str, repeats: int) -> Result:
    import tltorch  # imported late: it switches tensorly's global backend to pytorch

    kh, kw = layer.conv.kernel_size
    if method == "tucker2":
        # Full Tucker over (O, I, kh, kw) with the spatial ranks kept full is Tucker-2.
        rank: object = (*_channel_ranks(layer.rank), kh, kw)
        factorization = "tucker"
    else:
        rank, factorization = int(layer.rank), "cp"

    def build() -> nn.Module:
        return tltorch.FactorizedConv.from_conv(
            layer.conv, rank=rank, factorization=factorization, decompose_weights=True,
            implementation="factorized")

    with tl.backend_context("pytorch"):
        elapsed, module = median_seconds(build, repeats)
        approx = module.weight.to_tensor().detach()
    weight = layer.conv.weight.detach()
    return Result(elapsed, relative_error(weight, approx), params_of(module), repeats)


def estimate(ratio: float, widths: list[float]) -> list[str]:
    """Time one 512×512×3×3 tensorly ``parafac`` and project the CP runs from it."""
    torch.manual_seed(0)
    conv = nn.Conv2d(512, 512, 3, padding=1)
    geom = LayerGeometry.of(conv)
    rank = int(get_method("cp").rank_for_params(geom, ratio * geom.dense_params))
    probe = run_tensorly(Layer("probe", conv, rank, 1.0), "cp", 1)
    unit = probe.seconds / (conv.weight.numel() * rank)  # ALS cost ∝ entries × rank
    lines = [f"tensorly parafac, 512x512x3x3, R={rank}: {seconds(probe.seconds)}, "
             f"error {probe.error:.4f}"]
    for width in widths:
        model, _ = vgg16(width, None)
        layers, _ = plan_layers(model, "cp", ratio)
        per_layer = {lay.name: unit * lay.conv.weight.numel() * int(lay.rank) for lay in layers}
        lines.append(f"width {width}: tensorly parafac over all {len(layers)} CP layers "
                     f"~{seconds(sum(per_layer.values()))} (tltorch runs it again: x2); "
                     "per layer: " + ", ".join(f"{n} {seconds(t)}" for n, t in per_layer.items()))
    return lines


def _summary_rows(method: str, layers: list[Layer],
                  results: dict[tuple[str, str], Result], tools: list[str]) -> list[str]:
    rows = []
    dense = {lay.name: params_of(lay.conv) for lay in layers}
    for tool in tools:
        done = [lay for lay in layers if (lay.name, tool) in results]
        if not done:
            continue
        got = [results[(lay.name, tool)] for lay in done]
        ours = [results[(lay.name, "ours")] for lay in done if (lay.name, "ours") in results]
        total = sum(r.seconds for r in got)
        ours_total = sum(r.seconds for r in ours)
        ratio = f"{total / ours_total:.1f}x" if tool != "ours" and ours_total else "1"
        worst = max(zip(got, done, strict=True), key=lambda pair: pair[0].error)
        error = combined_error([r.error for r in got], [lay.norm for lay in done])
        compression = sum(dense[lay.name] for lay in done) / sum(r.params for r in got)
        runs = "median of " + str(got[0].runs) if got[0].runs > 1 else "once"
        rows.append(
            f"| {method} | {tool} | {len(done)}/{len(layers)} | {compression:.2f}x | "
            f"{seconds(total)} | {ratio} | {error:.5f} | {worst[0].error:.4f} "
            f"({worst[1].name}) | {runs} |")
    return rows


def _layer_rows(layers: list[Layer], results: dict[tuple[str, str], Result],
                tools: list[str]) -> list[str]:
    lines = ["| layer | shape | rank | " + " | ".join(f"{t} time | {t} error" for t in tools)
             + " |", "|---|---|---|" + "---|---|" * len(tools)]
    for lay in layers:
        cells = []
        for tool in tools:
            got = results.get((lay.name, tool))
            cells += [seconds(got.seconds), f"{got.error:.4f}"] if got else ["-", "-"]
        shape = "x".join(map(str, lay.conv.weight.shape))
        lines.append(f"| {lay.name} | {shape} | {lay.rank} | " + " | ".join(cells) + " |")
    return lines


RUNNERS: dict[str, Callable[[Layer, str, int], Result]] = {
    "ours": run_ours, "tensorly": run_tensorly, "tltorch": run_tltorch}

NOTES = [
    "- Timed: ours = `decompose_layer` (factorisation and the plain-module replacement); "
    "tensorly = the factorisation call alone, library defaults (`partial_tucker`: "
    "n_iter_max=100, init='svd', tol=1e-4; `parafac`: n_iter_max=100, init='svd', tol=1e-8, "
    "no line search); tltorch = `FactorizedConv.from_conv` (module and its tensorly `tucker` "
    "or `parafac` fit with the same defaults, CP with l2_reg=1e-5).",
    "- Error: ours from the kernel the built module really applies (probed with one-hot "
    "inputs); tensorly from its factors; tltorch from `weight.to_tensor()`. "
    "error (model) = sqrt(sum err^2 ||W||^2) / sqrt(sum ||W||^2) over the listed layers.",
    "- their/ours = the tool's summed time / our summed time over the same layers, measured in "
    "the same run; other processes shared the CPU, so absolute times are noisy.",
    "- compression = dense params of those layers / params of the replacements (tltorch's "
    "Tucker holds two extra 3x3 spatial factors, its CP R extra weights).",
    "- Untrained weights have a flat spectrum: errors near 0.9 at 10x fewer params are "
    "expected, and iterative fits converge slowly; trained weights give lower "
    "errors.",
]


def measure(layers: list[Layer], method: str, tools: list[str], repeats: int,
            slow_repeats: int) -> dict[tuple[str, str], Result]:
    """Run every tool on every layer; ours ``repeats`` times, the others ``slow_repeats``."""
    results: dict[tuple[str, str], Result] = {}
    for lay in layers:
        for tool in tools:
            result = RUNNERS[tool](lay, method, repeats if tool == "ours" else slow_repeats)
            results[(lay.name, tool)] = result
            log.info("%s %s %s rank %s: %s, error %.4f", method, tool, lay.name, lay.rank,
                     seconds(result.seconds), result.error)
    return results


def numpy_reference(layer: Layer, method: str, results: dict[tuple[str, str], Result]) -> str:
    """A table row: tensorly's numpy backend on one layer, beside its pytorch time."""
    got = run_tensorly(layer, method, 1, backend="numpy")
    log.info("%s tensorly-numpy %s: %s", method, layer.name, seconds(got.seconds))
    torch_got = results.get((layer.name, "tensorly"))
    return (f"| {method} | {layer.name} | {layer.rank} | {seconds(got.seconds)} | "
            f"{seconds(torch_got.seconds) if torch_got else '-'} | {got.error:.4f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=1.0, help="VGG16 width multiplier")
    parser.add_argument("--checkpoint", help="lpsd-search checkpoint of the same VGG16")
    parser.add_argument("--ratio", type=float, default=0.1, help="kept fraction of each "
                        "layer's params (default 0.1 = 10x fewer)")
    parser.add_argument("--methods", default="tucker2,cp", help="comma list of tucker2, cp")
    parser.add_argument("--tools", default="ours,tensorly,tltorch", help="comma list")
    parser.add_argument("--repeats", type=int, default=5, help="runs of ours (median)")
    parser.add_argument("--slow-repeats", type=int, default=1,
                        help="runs of tensorly / tltorch (median); default once")
    parser.add_argument("--cp-layers", default=None,
                        help="regex: run CP (every tool) only on the matching layers")
    parser.add_argument("--numpy-layer", default=None,
                        help="also time tensorly's numpy backend on this one layer")
    parser.add_argument("--ours-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a fit option for ours, e.g. tol=3e-4 (repeatable; default: "
                             "lpsd-search's defaults)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--estimate-only", action="store_true",
                        help="time one 512x512x3x3 parafac, project the CP run and stop")
    parser.add_argument("--note", action="append", default=[],
                        help="a line for the results file's notes (repeatable)")
    parser.add_argument("--output", type=Path, default=None, help="results markdown file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    threads_note = limit_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    tools = [t for t in args.tools.split(",") if t]
    if set(methods) - set(METHODS) or set(tools) - set(TOOLS) or "ours" not in tools:
        parser.error(f"methods from {METHODS}, tools from {TOOLS} including 'ours'")
    try:
        OURS_OPTIONS.update({key: float(value) for key, value in
                             (item.split("=", 1) for item in args.ours_option)})
    except ValueError:
        parser.error("--ours-option takes KEY=NUMBER, e.g. tol=3e-4")
    if args.estimate_only:
        for line in estimate(args.ratio, sorted({1.0, 0.5, args.width})):
            print(line)
        return 0

    model, weights_note = vgg16(args.width, args.checkpoint)
    started = time.perf_counter()
    lines = header("Whole-model decomposition of CIFAR VGG16", threads_note, [
        ("weights", weights_note), ("width", str(args.width)),
        ("ours options", ", ".join(f"{k}={v:g}" for k, v in OURS_OPTIONS.items())
         or "defaults"),
        ("target", f"{args.ratio:g} of each layer's params (ranks from lpsd-search "
                   "`rank_for_params`, the same for every tool)")])
    summary = ["## Summary", "",
               "| method | tool | layers | compression | time | their/ours | error (model) | "
               "worst layer error | runs |", "|---|---|---|---|---|---|---|---|---|"]
    details: list[str] = []
    numpy_lines: list[str] = []
    for method in methods:
        layers, skipped = plan_layers(model, method, args.ratio)
        left_out: list[str] = []
        if method == "cp" and args.cp_layers:
            left_out = [lay.name for lay in layers if not re.search(args.cp_layers, lay.name)]
            layers = [lay for lay in layers if re.search(args.cp_layers, lay.name)]
        results = measure(layers, method, tools, args.repeats, args.slow_repeats)
        numpy_lines += [numpy_reference(lay, method, results)
                        for lay in layers if lay.name == args.numpy_layer]
        summary += _summary_rows(method, layers, results, tools)
        details += [f"## {method}: per layer", ""]
        if skipped:
            details += [f"Left dense ({method} cannot make them smaller, by its `supports`): "
                        + ", ".join(skipped), ""]
        if left_out:
            details += [f"Not run (subset `--cp-layers '{args.cp_layers}'`, to bound the run "
                        "time): " + ", ".join(left_out), ""]
        details += [*_layer_rows(layers, results, tools), ""]
    lines += [*summary, ""]
    if numpy_lines:
        lines += ["## tensorly numpy backend, one layer (reference, run once)", "",
                  "| method | layer | rank | numpy time | pytorch time | numpy error |",
                  "|---|---|---|---|---|---|", *numpy_lines, ""]
    lines += [*details, "## Notes", "", *NOTES, *(f"- {note}" for note in args.note),
              f"- Whole benchmark wall time: {seconds(time.perf_counter() - started)}; "
              f"{load_average()} at the end.", ""]
    output = args.output or RESULTS / (
        "decompose_vgg16.md" if args.width == 1.0 else f"decompose_vgg16_width{args.width}.md")
    print(write_results(output, lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
