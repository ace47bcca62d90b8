"""What a model's code is: digests of the source files behind a spec and a built model.

A trained baseline is determined by its model's code as much as by its spec: an edited
``nets.py`` under an unchanged ``nets.py:build`` is another model. ``model_fingerprint`` digests
the built architecture (its module tree and tensor shapes) together with the source files of its
factory and of every module class it holds that does not come with torch, so an edit to any of
them, shape-preserving or not, is noticed. ``code_digest`` is the digest of the one file a
user's spec names, stored with saved models so that loading them notices a changed file.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
from functools import lru_cache
from pathlib import Path

from torch import nn

from lpsd_search.models.user_factory import is_file_target
from lpsd_search.models.zoo import MODELS, names_code


def file_digest(path: str | Path) -> str:
    """The first 16 hex digits of the file's SHA-256."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def spec_source(spec: str) -> Path | None:
    """The source file of the factory ``spec`` names, if one can be found without running
    code: the file of ``file.py:fn``, the already imported module of ``pkg.mod:fn``, the zoo's
    own file for a built-in; None for ``torchvision:NAME`` and objects given from Python."""
    spec = spec.strip()
    head = spec.partition(":")[0]
    if head in MODELS:
        source = inspect.getsourcefile(MODELS.get(head))
        return Path(source) if source else None
    if not names_code(spec):
        return None
    target = spec.rpartition(":")[0]
    if is_file_target(target):
        path = Path(target).expanduser()
        return path if path.is_file() else None
    module = sys.modules.get(target)
    source = getattr(module, "__file__", None)
    return Path(source) if source else None


def code_digest(spec: str) -> str | None:
    """Digest of the file of a user's ``file.py:fn`` or ``pkg.mod:fn`` spec (else None)."""
    if not names_code(spec):
        return None
    source = spec_source(spec)
    return file_digest(source) if source is not None and source.is_file() else None


@lru_cache(maxsize=256)
def _cached_digest(path: str, modified: int, size: int) -> str:
    return file_digest(path)


def _source_digest(path: str | None) -> str:
    if not path or not Path(path).is_file():
        return "no source"
    stat = Path(path).stat()
    return _cached_digest(path, stat.st_mtime_ns, stat.st_size)


def _is_torch(cls: type) -> bool:
    return cls.__module__.split(".")[0] in ("torch", "torchvision")


def model_fingerprint(spec: str, model: nn.Module) -> str:
    """Digest of ``model``'s architecture and of the code that built it (see the module).

    Args:
        spec: the spec it was built from.
        model: the freshly built (untrained) model.
    """
    digest = hashlib.sha256(repr(model).encode())
    for key, tensor in model.state_dict().items():
        digest.update(f"{key}{tuple(tensor.shape)}{tensor.dtype}".encode())
    source = spec_source(spec)
    files = {str(source)} if source is not None else set()
    for cls in {type(module) for module in model.modules()}:
        if not _is_torch(cls):
            try:
                files.add(inspect.getsourcefile(cls) or "")
            except TypeError:  # a class defined at a prompt has no file
                files.add("")
    for path in sorted(files):
        digest.update(f"{Path(path).name}:{_source_digest(path)}".encode())
    return digest.hexdigest()[:16]
