#!/usr/bin/env bash
# On a machine with pip access, from the repository root: fill .whl/ (the wheels a bare CUDA machine lacks:
# lmdb, nvImageCodec, nvJPEG; for Python 3.12 on x86-64) and .sample/ (real JPEGs) for tools/gpu_session.sh.
# Both folders are ignored by git.
#   Usage: tools/gpu_prepare.sh FOLDER_OF_REAL_JPEGS [CUDA_MINOR, default 13.0] [NVJPEG, default CUDA_MINOR]
# nvJPEG is pinned to the CUDA minor version torch there was built with unless NVJPEG names another: 13.2 or
# later makes the device decode boxes as regions (earlier ones decode whole images; tools/gpu_check.py says
# which it found). A newer nvJPEG needs a driver that supports its CUDA version.
set -euo pipefail
images=${1:?usage: tools/gpu_prepare.sh FOLDER_OF_REAL_JPEGS [CUDA_MINOR] [NVJPEG]}
cuda=${2:-13.0}
nvjpeg=${3:-$cuda}
mkdir -p .whl .sample
rm -f .whl/nvidia_nvjpeg-*.whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl lmdb "nvidia-nvimgcodec-cu${cuda%%.*}" "nvidia-nvjpeg==${nvjpeg}.*"
find "$images" -maxdepth 1 -iname '*.jpeg' -exec cp {} .sample/ \;
echo "$(ls .whl | wc -l) wheels in .whl/, $(ls .sample | wc -l) JPEGs in .sample/ ($(du -shc .whl .sample | tail -1 | cut -f1))"
