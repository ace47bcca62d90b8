"""The package as users get it: a wheel that carries its presets, and a lean import."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_the_presets(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         str(ROOT), "-w", str(tmp_path / "wheel")],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = (tmp_path / "wheel").glob("lpsd_search-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {Path(n).name for n in names if n.startswith("lpsd_search/presets/search_spaces/")}
    assert {"default.toml", "svd.toml"} <= shipped
    # Installed from the wheel (not the checkout), the presets are found by name.
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=300)
    code = ("import lpsd_search, lpsd_search.presets as p; "
            "print(lpsd_search.__file__); print(','.join(p.preset_names('search_spaces')))")
    # -S skips the .pth files, so the editable install of the checkout cannot shadow the wheel;
    # site-packages stays on the path for torch and optuna.
    path = f"{target}{os.pathsep}{sysconfig.get_paths()['purelib']}"
    result = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": path}, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    location, names_line = result.stdout.split()
    assert location.startswith(str(target))
    assert {"default", "svd"} <= set(names_line.split(","))


def test_import_is_lean():
    code = ("import sys, lpsd_search, torch; "
            "print('ray' in sys.modules, 'optuna' in sys.modules, torch.cuda.is_initialized())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=120)
    assert result.stdout.split() == ["False", "False", "False"]
