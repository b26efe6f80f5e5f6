#!/usr/bin/env bash
# The GPU check in one command, from the repository root on a CUDA machine (H100/H200), under 5 minutes, so
# that one device call of 6 minutes holds it with room to spare (each training feed runs in a fresh process;
# the summary against the targets is printed last; a failed feed is a row of it):
#   tools/gpu_session.sh [FOLDER_OF_REAL_JPEGS]     (default: .sample/, filled by tools/gpu_prepare.sh)
# Installs the wheels in .whl/ if there are any (a bare machine lacks lmdb and nvImageCodec), runs the tests
# that touch the GPU path (CUDA-marked ones included, each under a timeout), then tools/gpu_check.py --stages on
# the JPEGs replicated to 8192 records, every feed (the pipeline's peak device memory among them); with
# SHORT_SIDE=1 also a --short-side 256 database. Every step has a timeout, so one hang cannot take the
# machine's time. Logs go to $OUT (default /tmp/gpu-session).
set -uo pipefail
out=${OUT:-/tmp/gpu-session}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
images=${1:-.sample}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/machine.txt"
python3 -c "import torch, os; print('torch', torch.__version__, 'CUDA', torch.version.cuda, os.cpu_count(), 'cores')" \
  | tee -a "$out/machine.txt"
python3 -c "import nvidia.nvimgcodec as n; print('nvImageCodec', n.__version__)" 2>/dev/null | tee -a "$out/machine.txt"
# pytest-timeout is loaded by its own entry point where it is installed (asking for it again with -p registers
# it twice and fails); without it, the step's own timeout bounds the run
timeout_flag=$(python3 -c "import pytest_timeout" 2>/dev/null && echo "--timeout 60")
timeout 90 python3 -m pytest -q -p no:cacheprovider $timeout_flag tests/test_gpu.py tests/test_prefetch.py \
  tests/test_hybrid.py tests/test_host_stage.py tests/test_share.py tests/test_resample.py 2>&1 | tail -n 15 | tee "$out/tests.log"
timeout 200 python3 tools/gpu_check.py --images "$images" --count 8192 --steps 25 --stages 2>&1 \
  | tee "$out/gpu_check_lossless.log"
if [ "${SHORT_SIDE:-0}" = 1 ]; then
  timeout 120 python3 tools/gpu_check.py --images "$images" --count 8192 --steps 25 --short-side 256 --skip-resume \
    --feeds synthetic,gpu,hybrid 2>&1 | tee "$out/gpu_check_short_side_256.log"
fi
