"""How a trial uses the hardware: precision, memory format, compilation, CPU threads.

``RuntimeConfig`` (in ``config``) is what the user asked for, with ``auto`` choices;
``resolve_runtime`` turns it into a ``Runtime`` for one device, deciding every ``auto`` from what
the device does fast (measured on the machines this project runs on: see
``benchmarks/results/evaluator_cpu.md``), and ``Runtime.describe`` is what the results record.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lpsd_search.config import RuntimeConfig

logger = logging.getLogger(__name__)

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    """The resolved settings of one process's trials on one device.

    Attributes:
        device: where models are decomposed, fine-tuned and evaluated.
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast; weights stay fp32).
        channels_last: models and batches use the channels-last memory format.
        compile: the compressed model is wrapped by ``torch.compile`` for its fine-tune.
        threads: intra-op CPU threads of this process.
    """

    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    threads: int = 1

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for plain fp32."""
        return _DTYPES[self.precision]

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """The autocast context of this runtime (a no-op in fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def prepare(self, model: nn.Module) -> nn.Module:
        """``model`` on this device in this memory format (in place; returned for chaining)."""
        model.to(self.device)
        if self.channels_last:
            # Per 4-d weight: ``model.to(memory_format=…)`` raises on the 5-d weights of the
            # Conv3d stages a tensor train builds.
            for param in model.parameters():
                if param.dim() == 4:
                    param.data = param.data.contiguous(memory_format=torch.channels_last)
        return model

    def inputs(self, batch: torch.Tensor) -> torch.Tensor:
        """A batch of images in this runtime's memory format (already on the device)."""
        if self.channels_last and batch.dim() == 4:
            return batch.contiguous(memory_format=torch.channels_last)
        return batch

    def describe(self) -> dict[str, object]:
        """What the results record about how the trials ran."""
        return {"device": str(self.device), "precision": self.precision,
                "channels_last": self.channels_last, "compile": self.compile,
                "threads": self.threads}


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no flags known, so nothing is assumed fast
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has oneDNN's bf16 kernels (AMX-BF16 or AVX512-BF16); elsewhere bf16 is
    emulated and slower than fp32."""
    return bool(_cpu_flags() & {"amx_bf16", "avx512_bf16"})


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def derived_threads(workers: int = 1, cores: int | None = None,
                    load: float | None = None) -> int:
    """Intra-op threads for one of ``workers`` processes sharing this machine's cores.

    The cores are split between the workers, and cores that other jobs keep busy (the 1-minute
    load average when the process starts) are left to them: OpenMP threads that wait for a
    descheduled peer made two threads up to 30x slower than one on a loaded 2-core machine.
    """
    cores = available_cores() if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:  # no load average on this system
            load = 0.0
    free = max(1, cores - int(load))
    return max(1, min(cores // max(workers, 1), free))


def resolve_runtime(config: RuntimeConfig, device: torch.device) -> Runtime:
    """Decide every ``auto`` of ``config`` for ``device``.

    ``precision=auto`` is bf16 on CPUs where ``cpu_has_fast_bf16`` holds and fp32 elsewhere, CUDA
    included: on an H200 the benchmark's models (28x28 inputs, batch 64) fine-tuned at 0.92x
    the old loop's speed under bf16 autocast with channels-last and at 1.46x in fp32 (with
    TF32 matmuls): steps that small are bound by kernel launches, which autocast's casts add
    to (``benchmarks/results/evaluator_gpu.md``); large models should pass ``bf16``.
    ``channels_last=auto`` is on for the CPU (oneDNN's NHWC kernels: a Tucker-2
    VGG16-width-0.25 step took 21.6 ms instead of 31.4 ms in bf16, 23.4 instead of 36.9 in fp32,
    evaluation half the time) and off on CUDA (it was part of the slower GPU run);
    ``threads=None`` is ``derived_threads(config.workers)``. Sets torch's intra-op threads and,
    on CUDA, ``cudnn.benchmark`` (a trial's batches share a shape).
    """
    precision = config.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"
    if precision == "fp16" and device.type == "cpu":
        logger.warning("fp16 on the CPU is emulated and slow; bf16 is the fast CPU precision")
    channels_last = {"on": True, "off": False}.get(config.channels_last, device.type == "cpu")
    threads = config.threads or derived_threads(config.workers)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        # TF32 for the fp32 parts (the optimiser's master weights, the layers autocast keeps in
        # fp32): the factors themselves are computed by the decompositions outside this setting.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    runtime = Runtime(device, precision, channels_last, config.compile, threads)
    logger.info("trials run with %s", runtime.describe())
    return runtime


@contextlib.contextmanager
def fp32_decompositions() -> Iterator[None]:
    """Full-precision matmuls while factors are computed (TF32 would cost them accuracy)."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
