#!/usr/bin/env bash
# Wheels of the Python packages bench/device_suite.sh needs that the lent GPU machine's image
# lacks (/work/.library/device KINDS.md lists what it has), at the versions this checkout's
# .venv runs, for its Python 3.12, into workdirs/wheels (gitignored; `run` carries it).
set -eu
cd "$(dirname "$0")/.."
PACKAGES="ml_collections grain array_record portpicker diffusers importlib_metadata"
mkdir -p workdirs/wheels
for name in $PACKAGES; do
  version=$(.venv/bin/python -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
  [ -n "$version" ] || { echo "$name is not in .venv: run make .venv/.test first" >&2; exit 1; }
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d workdirs/wheels "$name==$version"
done
ls -1 workdirs/wheels
du -sh workdirs/wheels
