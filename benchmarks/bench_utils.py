"""Helpers shared by the benchmark scripts: environment, timing, models, kernels, markdown.

Not part of the library: the scripts in this folder import it as a sibling module (running
``python benchmarks/<name>.py`` puts this folder on ``sys.path``).
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lpsd_search.models.checkpoint import load_checkpoint, load_weights
from lpsd_search.models.zoo import build_model

RESULTS = Path(__file__).resolve().parent / "results"


def limit_threads(threads: int) -> str:
    """Use ``threads`` CPU threads in torch and (when threadpoolctl is there) in numpy's BLAS.

    Returns a short note on what was limited, for the results header.
    """
    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # numpy's BLAS then uses its own default (all cores)
        return f"torch {threads}; numpy BLAS: library default"
    # Kept alive for the whole process on purpose: the limit must cover every later call.
    limit_threads.keep = threadpool_limits(limits=threads)  # type: ignore[attr-defined]
    return f"torch {threads}; numpy BLAS {threads} (threadpoolctl)"


def version_of(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def header(title: str, threads_note: str, extra: Sequence[tuple[str, str]] = ()) -> list[str]:
    """The opening lines of a results file: title, exact command, date, versions, threads."""
    command = "python " + " ".join(shlex.quote(a) for a in [_script_path(), *sys.argv[1:]])
    rows = [
        ("command", f"`{command}`"),
        ("date", datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")),
        ("torch", torch.__version__),
        ("tensorly", version_of("tensorly")),
        ("tltorch (tensorly-torch)", version_of("tensorly-torch")),
        ("python", platform.python_version()),
        ("CPU threads", threads_note),
        ("CPU cores on the machine", str(os.cpu_count())),
        ("CPU", cpu_description()),
        ("machine load at the start", load_average()),
        *extra,
    ]
    lines = [f"# {title}", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in rows]
    return [*lines, ""]


def cpu_description() -> str:
    """The CPU's model name and the vector units torch's kernels use (results differ by CPU).

    Two 2-core machines of this project measured the same code 2.5-3.7x apart, so a results
    file names the processor it ran on: the model name and flags from ``/proc/cpuinfo`` where
    there is one (AMX speeds up bf16 matmuls only), and torch's CPU capability.
    """
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    fields = {key.strip(): value.strip()
              for key, _, value in (line.partition(":") for line in info.splitlines())}
    parts = [fields.get("model name") or platform.processor() or platform.machine(),
             f"torch kernels {torch.backends.cpu.get_cpu_capability()}"]
    if "amx_bf16" in fields.get("flags", "").split():
        parts.append("AMX-BF16")
    return "; ".join(parts)


def load_average() -> str:
    """The 1-minute load average: other processes compete for the same cores."""
    try:
        return f"load average {os.getloadavg()[0]:.2f}"
    except OSError:
        return "load average unknown"


def _script_path() -> str:
    script = Path(sys.argv[0]).resolve()
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def median_seconds(function: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time of ``repeats`` calls and the last call's result."""
    times = []
    result = None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def vgg16(width: float, checkpoint: str | None) -> tuple[nn.Module, str]:
    """CIFAR-style VGG16 (32×32 in, 10 classes) and a note on where its weights came from.

    Three input channels, or as many as the checkpoint's first convolution has (a VGG16 trained
    here on Fashion-MNIST has one).
    """
    spec = "vgg16" if width == 1.0 else f"vgg16:width={width}"
    torch.manual_seed(0)  # the initial weights are then reproducible
    if checkpoint is None:
        model = build_model(spec, in_channels=3, num_classes=10, input_size=(32, 32))
        return model.eval(), f"initial (untrained) weights of `{spec}`, torch.manual_seed(0)"
    loaded = load_checkpoint(checkpoint)
    first = next(v for v in loaded["state_dict"].values() if v.ndim == 4)  # features.0.weight
    model = build_model(spec, in_channels=first.shape[1], num_classes=10, input_size=(32, 32))
    load_weights(model, loaded)
    return model.eval(), (f"checkpoint `{checkpoint}` ({loaded.get('data_spec', '?')}) "
                          f"loaded into `{spec}`")


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def params_of(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def effective_kernel(module: nn.Module, conv: nn.Conv2d) -> torch.Tensor:
    """The dense kernel ``O × I × kh × kw`` that ``module`` (a stand-in for ``conv``) applies.

    Probing the built module, rather than re-assembling factors, measures what the replacement
    really computes and works the same for every tool. One-hot inputs of size ``kh × kw`` and
    'same' padding put each kernel tap under the centre output position; the bias (the response
    to a zero input) is subtracted. Needs a stride-1, dilation-1 conv with 'same' padding
    (every VGG16 conv).
    """
    kh, kw = conv.kernel_size
    if (conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1
            or conv.padding != (kh // 2, kw // 2) or kh % 2 == 0 or kw % 2 == 0):
        raise ValueError(f"effective_kernel needs a stride-1 'same' conv, got {conv}")
    n_in = conv.in_channels
    probes = torch.eye(n_in * kh * kw).reshape(n_in * kh * kw, n_in, kh, kw)
    with torch.inference_mode():
        response = module(probes)[:, :, kh // 2, kw // 2]  # (I·kh·kw) × O
        offset = module(torch.zeros(1, n_in, kh, kw))[:, :, kh // 2, kw // 2]
    return (response - offset).T.reshape(conv.out_channels, n_in, kh, kw)


def relative_error(weight: torch.Tensor, approx: torch.Tensor) -> float:
    return float(torch.linalg.norm(weight - approx) / torch.linalg.norm(weight))


def combined_error(errors: Sequence[float], norms: Sequence[float]) -> float:
    """``‖W − Ŵ‖ / ‖W‖`` over all layers together, from per-layer relative errors and norms."""
    residual = sum((e * n) ** 2 for e, n in zip(errors, norms, strict=True))
    total = sum(n * n for n in norms)
    return math.sqrt(residual / total) if total else 0.0


def seconds(value: float) -> str:
    if value >= 100:
        return f"{value:.0f} s"
    if value >= 1:
        return f"{value:.2f} s"
    return f"{value * 1000:.1f} ms"


def write_results(path: Path, lines: Sequence[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return path
