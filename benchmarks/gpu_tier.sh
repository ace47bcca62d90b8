#!/usr/bin/env bash
# The GPU checks of issue 16 in one run, for a lent GPU machine that has PyTorch but not all of
# our dependencies: install the carried wheels, run the tests marked gpu, then the gpu tier of
# benchmarks/evaluator.py. Results go to $OUT (default benchmarks/results).
#   carried: .gpu-carry/wheels (optuna and its dependencies), .gpu-carry/fashion-mnist (the IDX
#   files of the Debian package dataset-fashion-mnist). .gpu-carry/ is not committed; make it with
#     pip download -d .gpu-carry/wheels --only-binary=:all: --implementation cp \
#         --python-version 3.12 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
#         --platform manylinux_2_28_x86_64 optuna sqlalchemy alembic mako colorlog greenlet
#     cp -r /usr/share/datasets/fashion-mnist .gpu-carry/
#   (the 2026-12-04 machine had Python 3.12 with torch, numpy, scipy, scikit-learn, rich, pytest),
#   then run it there with the device tool: command "bash benchmarks/gpu_tier.sh", carry
#   [".gpu-carry"]; it writes to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
export PYTHONPATH=$PWD
# Without an install the presets (top-level folders mapped into the package) are not found:
# link them where the package looks.
for kind in search_spaces objectives; do
    [ -e "lpsd_search/presets/$kind" ] || ln -s "../../$kind" "lpsd_search/presets/$kind"
done
python -c "import optuna" 2>/dev/null \
    || python -m pip install -q --no-index --find-links .gpu-carry/wheels optuna sqlalchemy alembic colorlog
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch; print('torch', torch.__version__)"
timeout 150 python -m pytest -q -p no:cacheprovider -m gpu tests/trial/test_gpu.py \
    -o addopts="" --timeout=140 --tb=short 2>&1 | tail -40 | tee "$OUT/gpu_tests.txt"
timeout 450 python benchmarks/evaluator.py --tier gpu --compile --workers 1,4 \
    --data fashion-mnist:.gpu-carry/fashion-mnist --output "$OUT/evaluator_gpu.md" 2>&1 \
    | grep -v "^ " | tail -60
