"""The package as users get it: its declared dependencies, a wheel that carries every module, the
presets and ``py.typed``, one version string, and a lean import."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

import lpsd_search

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lpsd_search"
PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT: dict[str, Any] = PYPROJECT["project"]
SETUPTOOLS: dict[str, Any] = PYPROJECT["tool"]["setuptools"]

# Every third-party module the library imports, and the distribution that provides it; a new
# import fails test_every_imported_distribution_is_declared until it is added here and declared.
DISTRIBUTIONS = {
    "PIL": "pillow", "matplotlib": "matplotlib", "numpy": "numpy", "optuna": "optuna",
    "ray": "ray", "rich": "rich", "scipy": "scipy", "sklearn": "scikit-learn",
    "sqlalchemy": "sqlalchemy", "tomli": "tomli", "torch": "torch", "torchvision": "torchvision",
}
# Modules that `from lpsd_search import search` must not import (each costs a second or more,
# and CUDA or Ray would be started): they are imported by the functions that need them.
HEAVY = ("torchvision", "sklearn", "pandas", "PIL", "ray")


def _requirements(group: str | None = None) -> dict[str, Requirement]:
    lines = PROJECT["dependencies"] if group is None else PROJECT["optional-dependencies"][group]
    return {(r := Requirement(line)).name.lower(): r for line in lines}


def test_core_dependencies() -> None:
    core = _requirements()
    # Trial.set_constraint is new in Optuna 5.
    optuna = core["optuna"].specifier
    assert optuna.contains("5.0") and not optuna.contains("4.9")
    assert {"torch", "torchvision", "pillow", "scipy", "scikit-learn", "sqlalchemy"} <= set(core)
    tomli = core["tomli"].marker
    assert tomli is not None
    assert tomli.evaluate({"python_version": "3.10"})
    assert not tomli.evaluate({"python_version": "3.11"})
    # The library never imports tensorly; the cross-check tests and the benchmarks do.
    assert "tensorly" not in core
    assert not [path for path in PACKAGE.rglob("*.py") if "import tensorly" in path.read_text()]
    assert "tensorly" in _requirements("dev")
    assert {"tensorly", "tensorly-torch"} <= set(_requirements("bench"))
    assert "ray" in _requirements("ray")


def _imported_top_level_modules() -> dict[str, str]:
    """Third-party top-level module -> one file of the package that imports it."""
    found: dict[str, str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("lpsd_search", "tomllib"):
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_every_imported_distribution_is_declared() -> None:
    imported = _imported_top_level_modules()
    assert {"torch", "optuna", "sklearn", "scipy", "PIL"} <= set(imported)  # the scan works
    assert sorted(set(imported) - set(DISTRIBUTIONS)) == []
    declared = set(_requirements()) | set(_requirements("ray"))
    missing = {module: imported[module] for module in imported
               if DISTRIBUTIONS[module] not in declared}
    assert missing == {}


def test_setuptools_lists_every_package() -> None:
    # A subpackage missing from the list would be missing from the wheel (and `pip install .`).
    on_disk = {".".join(init.parent.relative_to(ROOT).parts)
               for init in PACKAGE.rglob("__init__.py")}
    data_packages = set(SETUPTOOLS["package-dir"])
    assert data_packages == {"lpsd_search.presets.search_spaces", "lpsd_search.presets.objectives"}
    assert set(SETUPTOOLS["packages"]) == on_disk | data_packages
    assert (PACKAGE / "py.typed").is_file()
    assert SETUPTOOLS["package-data"]["lpsd_search"] == ["py.typed"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the sources, so no stale ``build/`` of the checkout (nor the
    build's own files) can add or hide a module."""
    source = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("lpsd_search", "search_spaces", "objectives"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         str(source), "-w", str(out)],
        check=True, capture_output=True, timeout=300,
    )
    (built,) = out.glob("lpsd_search-*.whl")
    return built


def test_wheel_holds_every_module_and_the_metadata(wheel: Path) -> None:
    archive = zipfile.ZipFile(wheel)
    names = set(archive.namelist())
    modules = {str(path.relative_to(ROOT)) for path in PACKAGE.rglob("*.py")}
    assert {name for name in names if name.endswith(".py")} - {
        f"lpsd_search/presets/{kind}/__init__.py" for kind in ("search_spaces", "objectives")
    } == modules
    assert "lpsd_search/py.typed" in names
    version = PROJECT["version"]
    assert wheel.name == f"lpsd_search-{version}-py3-none-any.whl"
    meta = archive.read(f"lpsd_search-{version}.dist-info/METADATA").decode()
    requires = [line.split(": ", 1)[1] for line in meta.splitlines()
                if line.startswith("Requires-Dist: ")]
    core = [line for line in requires if "extra ==" not in line]
    assert sorted(Requirement(line).name for line in core) == sorted(_requirements())
    assert "lpsd-search = lpsd_search.cli:main" in archive.read(
        f"lpsd_search-{version}.dist-info/entry_points.txt").decode()


def test_wheel_ships_the_presets(wheel: Path, tmp_path: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {Path(n).name for n in names if n.startswith("lpsd_search/presets/search_spaces/")}
    assert {"default.toml", "svd.toml"} <= shipped
    # Installed from the wheel (not the checkout), the presets are found by name.
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=300)
    code = ("import lpsd_search, lpsd_search.presets as p; print(lpsd_search.__file__); "
            "print(','.join(p.preset_names('search_spaces'))); print(lpsd_search.__version__)")
    # -S skips the .pth files, so the editable install of the checkout cannot shadow the wheel;
    # site-packages stays on the path for torch and optuna.
    path = f"{target}{os.pathsep}{sysconfig.get_paths()['purelib']}"
    result = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": path}, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    location, names_line, version = result.stdout.split()
    assert location.startswith(str(target))
    assert {"default", "svd"} <= set(names_line.split(","))
    assert version == PROJECT["version"]  # read from the wheel's metadata


def test_one_version_string() -> None:
    assert lpsd_search.__version__ == metadata.version("lpsd-search")
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", lpsd_search.__version__)
    literals = [str(path.relative_to(ROOT)) for path in PACKAGE.rglob("*.py")
                if re.search(r"__version__\s*=\s*['\"]", path.read_text(encoding="utf-8"))]
    assert literals == []


def test_version_without_installed_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert lpsd_search._version() == "0+unknown"


def _run_lean(code: str, stubs: Path) -> list[str]:
    # A module that is not installed here could never show up in sys.modules: an empty stand-in
    # on the path makes any import of it visible (pandas would come in through scikit-learn).
    for name in HEAVY:
        if importlib.util.find_spec(name) is None:
            (stubs / name).mkdir()
            (stubs / name / "__init__.py").write_text("")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(stubs), *filter(None, [os.environ.get("PYTHONPATH")])])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_import_is_lean(tmp_path: Path) -> None:
    code = ("import sys, lpsd_search, torch; "
            "print('ray' in sys.modules, 'optuna' in sys.modules, torch.cuda.is_initialized())")
    assert _run_lean(code, tmp_path) == ["False", "False", "False"]


def test_search_import_is_lean(tmp_path: Path) -> None:
    # The search, the data sets and the model zoo are imported; the libraries only some data
    # sets and models need are not, and CUDA is not touched.
    code = (
        "import sys, torch\n"
        "from lpsd_search import search\n"
        "import lpsd_search.api\n"
        "assert search is lpsd_search.api.search\n"
        f"print(*[m for m in {HEAVY!r} if m in sys.modules] or ['none'])\n"
        "print(*[m in sys.modules for m in ('optuna', 'lpsd_search.data.splits', "
        "'lpsd_search.models.zoo', 'lpsd_search.data.images')])\n"
        "print(torch.cuda.is_initialized())\n"
    )
    assert _run_lean(code, tmp_path) == ["none", "True", "True", "True", "False", "False"]


def test_heavy_modules_come_with_what_needs_them(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from lpsd_search.data.splits import load_data\n"
        "from lpsd_search.models.zoo import build_model\n"
        "load_data('digits')\n"
        "print('sklearn' in sys.modules, 'torchvision' in sys.modules)\n"
        "build_model('torchvision:resnet18', in_channels=3, num_classes=10, input_size=(32, 32))\n"
        "print('torchvision' in sys.modules)\n"
    )
    assert _run_lean(code, tmp_path) == ["True", "False", "True"]


def test_ci_runs_the_readme_command_with_the_dev_extra() -> None:
    # CI runs the README's command; the dev extra it installs brings tensorly for the
    # cross-checks in tests/decompositions/test_versus_tensorly.py.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    command = next(line for line in readme.splitlines()
                   if re.fullmatch(r"python3 -m venv .*pytest", line))
    assert "pip install -e '.[dev]'" in command
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert 'eval "$test_command"' in ci and "default suite: $((SECONDS - suite_start)) s" in ci
