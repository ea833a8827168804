#!/usr/bin/env bash
# Issue 26's GPU measurement, prepared to run in one call of at most 10 minutes on a lent CUDA
# machine: cells/hour of experiments/regularization.yaml's cell with 1, 4, 8, 16 and 32 workers
# sharing GPU 0 (ablate run --gpus 0 --workers-per-gpu N), then the whole study's wall time at
# the best N (goal: under 5 minutes on one H200), its runs' devices checked (cuda:0).
#
#   bash benchmarks/gpu_study.sh --prepare     # here, with network: the wheels into .whl/
#   bash benchmarks/gpu_study.sh               # on the GPU machine: JSON in $OUT, else benchmarks/out
#   bash benchmarks/gpu_study.sh --cpu-smoke   # any machine: the Python part, tiny cells, on CPU
#
# The lent machine has torch but not this project's other dependencies (mlflow, optuna,
# pydantic...): they come as wheels from .whl/ (git-ignored), installed with --no-deps into
# /tmp/site. --prepare downloads them: every package of the virtualenv that runs it except
# torch and its CUDA libraries, pinned to the versions installed, for the target's Python
# (PY_VERSION, default 3.12: the lent machines' Python).
set -u
export PYTHONUNBUFFERED=1
out=${OUT:-benchmarks/out}
mkdir -p "$out"
python=${PYTHON:-python3}

if [ "${1:-}" = "--prepare" ]; then
    mkdir -p .whl
    "$python" -m pip freeze --exclude-editable | grep -viE '^(torch|triton|nvidia-|ablate)' > .whl/requirements.txt
    exec "$python" -m pip download -q -d .whl --no-deps --only-binary=:all: --python-version "${PY_VERSION:-3.12}" \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        --platform any -r .whl/requirements.txt
fi
if [ "${1:-}" = "--cpu-smoke" ]; then
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
    exec timeout 300 "$python" benchmarks/gpu_study.py --quick --out "$out/gpu_study_smoke.json"
fi

if [ -d .whl ]; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$python" -c "import os, torch, mlflow, optuna; print('torch', torch.__version__, torch.cuda.get_device_name(),
      'mlflow', mlflow.__version__, 'optuna', optuna.__version__, 'cores', os.cpu_count())" || exit 1
date -u
# The sweep gets the budget less 3 minutes, the study what is left: 520 s in all, inside 10 minutes
# with the installation (about a minute).
timeout 560 "$python" benchmarks/gpu_study.py --budget 520 --out "$out/gpu_study.json"
date -u
