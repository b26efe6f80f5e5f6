#!/usr/bin/env bash
# On a machine with pip access, from the repository root: fill .whl/ (the wheels a bare CUDA machine lacks:
# lmdb, nvImageCodec, nvJPEG pinned to the CUDA minor version torch there was built with; for Python 3.12 on
# x86-64) and .sample/ (real JPEGs) for tools/gpu_session.sh. Both folders are ignored by git.
#   Usage: tools/gpu_prepare.sh FOLDER_OF_REAL_JPEGS [CUDA_MINOR, default 13.0]
set -euo pipefail
images=${1:?usage: tools/gpu_prepare.sh FOLDER_OF_REAL_JPEGS [CUDA_MINOR]}
cuda=${2:-13.0}
mkdir -p .whl .sample
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl lmdb "nvidia-nvimgcodec-cu${cuda%%.*}" "nvidia-nvjpeg==${cuda}.*"
find "$images" -maxdepth 1 -iname '*.jpeg' -exec cp {} .sample/ \;
echo "$(ls .whl | wc -l) wheels in .whl/, $(ls .sample | wc -l) JPEGs in .sample/ ($(du -shc .whl .sample | tail -1 | cut -f1))"
