"""FactorCache: the time of a miss (factorise and store) against a hit (hash, copy, build).

A search builds the same (layer, method, rank, options) many times and asks the cache first
(``Decomposition.decompose(..., cache=...)``). For a few CIFAR VGG16 convs (initial weights,
``torch.manual_seed(0)``) and methods at ``--ratio`` of each layer's params, it times:

* miss: ``decompose`` with an empty cache: the weight's digest, the factorisation, storing
  clones of the factors and building the modules (median of ``--miss-repeats``, a fresh cache
  each time; a miss slower than ``--slow-seconds`` is timed once, which keeps the default run,
  with CP-ALS on a 512×512×3×3 kernel, near a minute);
* hit: ``decompose`` again with the filled cache: the digest, copying the stored factors and
  building the modules (median of ``--hit-repeats``);
* digest: ``weight_digest`` of the layer's weight alone (median of ``--hit-repeats``): what the
  cache adds to a miss (besides cloning the factors) and most of a hit.

It checks that the hit's module equals the miss's, value for value. Results go to
``benchmarks/results/factor_cache.md`` and ``.json`` (or ``--output`` and its ``.json`` twin).

Example:
    python benchmarks/factor_cache.py --methods svd,tucker2 --layers features.7
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from bench_utils import (
    RESULTS,
    conv_layers,
    cpu_description,
    header,
    limit_threads,
    load_average,
    median_seconds,
    seconds,
    vgg16,
    write_results,
)
from torch import nn

from lpsd_search.decompositions import FactorCache, LayerGeometry
from lpsd_search.decompositions.base import get_method
from lpsd_search.decompositions.cache import weight_digest

DEFAULT_LAYERS = "features.7,features.17,features.27"
"""64→128, 256→256 and 512→512 3×3 convs: the small, middle and large VGG16 layers."""


def _same(first: nn.Module, second: nn.Module) -> bool:
    return all(torch.equal(a, b) for a, b in zip(first.state_dict().values(),
                                                  second.state_dict().values(), strict=True))


def measure(conv: nn.Conv2d, method: str, ratio: float, miss_repeats: int,
            hit_repeats: int, slow_seconds: float) -> dict[str, Any]:
    """Miss, hit and digest times of one layer and method (seconds, medians)."""
    decomposition = get_method(method)
    geom = LayerGeometry.of(conv)
    rank = decomposition.rank_for_params(geom, ratio * geom.dense_params)
    misses = []
    for _ in range(max(1, miss_repeats)):
        cache = FactorCache()
        start = time.perf_counter()
        built = decomposition.decompose(conv, rank, cache=cache)
        misses.append(time.perf_counter() - start)
        if misses[0] > slow_seconds:
            break
    hit, again = median_seconds(lambda: decomposition.decompose(conv, rank, cache=cache),
                                hit_repeats)
    stats = cache.stats()
    if stats.misses != 1 or stats.hits != max(1, hit_repeats) or not _same(built, again):
        raise RuntimeError(f"{method}: the hits did not reproduce the miss ({stats})")
    digest, _ = median_seconds(lambda: weight_digest(conv.weight), hit_repeats)
    miss = statistics.median(misses)
    return {"method": method, "rank": list(rank) if isinstance(rank, tuple) else rank,
            "weight_shape": list(conv.weight.shape), "factor_bytes": stats.bytes,
            "misses_timed": len(misses), "miss_s": miss, "hit_s": hit, "digest_s": digest,
            "miss_over_hit": miss / hit}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default=DEFAULT_LAYERS, help="comma list of VGG16 convs")
    parser.add_argument("--methods", default="svd,tucker2,cp", help="comma list of methods")
    parser.add_argument("--ratio", type=float, default=0.1,
                        help="kept fraction of each layer's params (default 0.1)")
    parser.add_argument("--miss-repeats", type=int, default=3)
    parser.add_argument("--hit-repeats", type=int, default=10)
    parser.add_argument("--slow-seconds", type=float, default=10.0,
                        help="a miss slower than this is timed once (default 10)")
    # One thread by default: the ratio needs no more, and on a loaded 2-core machine two LAPACK
    # threads that wait on each other made a 64×64 eigh 80x slower (85 ms against 1 ms).
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=RESULTS / "factor_cache.md",
                        help="results markdown file (the JSON goes next to it)")
    args = parser.parse_args(argv)
    threads_note = limit_threads(args.threads)
    model, weights_note = vgg16(1.0, None)
    convs = dict(conv_layers(model))
    names = [n for n in args.layers.split(",") if n]
    unknown = [n for n in names if n not in convs]
    if unknown:
        parser.error(f"unknown layers {unknown}; valid: {', '.join(convs)}")
    methods = [m for m in args.methods.split(",") if m]
    for method in methods:  # warm-up: the first linear algebra call pays a one-off set-up
        get_method(method).decompose(nn.Conv2d(8, 16, 3), 0.5)
    rows = []
    for name in names:
        for method in methods:
            row = {"layer": name, **measure(convs[name], method, args.ratio, args.miss_repeats,
                                            args.hit_repeats, args.slow_seconds)}
            print(f"{name} {method}: miss {seconds(row['miss_s'])}, hit {seconds(row['hit_s'])}"
                  f" ({row['miss_over_hit']:.0f}x)", flush=True)
            rows.append(row)

    timing = (f"median of {args.miss_repeats} misses (a fresh cache each; once when slower "
              f"than {args.slow_seconds:g} s) and {args.hit_repeats} hits per row, "
              f"{args.hit_repeats} digests")
    lines = header("FactorCache: miss vs hit time of a decomposition", threads_note, [
        ("weights", weights_note),
        ("ranks", f"`rank_for_params` at {args.ratio:g} of each layer's params"),
        ("timing", timing)])
    lines += ["## Miss vs hit", "",
              "| layer | weight | method | rank | factors | miss | hit | miss / hit | digest |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        shape = "×".join(str(d) for d in row["weight_shape"])
        timed = "" if row["misses_timed"] > 1 else " (once)"
        lines.append(
            f"| {row['layer']} | {shape} | {row['method']} | {row['rank']} | "
            f"{row['factor_bytes'] / 1e6:.2f} MB | {seconds(row['miss_s'])}{timed} | "
            f"{seconds(row['hit_s'])} | {row['miss_over_hit']:.0f}x | "
            f"{seconds(row['digest_s'])} |")
    lines += ["", "miss: digest + factorise + store clones + build; hit: digest + copy the stored "
              "factors + build; digest: `weight_digest` alone. Every hit's module equals the "
              "miss's, value for value.", ""]
    output = write_results(args.output, lines)
    meta = {"command": " ".join(["python", "benchmarks/factor_cache.py", *sys.argv[1:]]),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="minutes"),
            "torch": torch.__version__, "python": platform.python_version(),
            "cpu": cpu_description(), "threads": threads_note, "load": load_average(),
            "weights": weights_note, "ratio": args.ratio, "timing": timing}
    json_path = output.with_suffix(".json")
    json_path.write_text(json.dumps({"header": meta, "rows": rows}, indent=2) + "\n",
                         encoding="utf-8")
    print(output)
    print(json_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
