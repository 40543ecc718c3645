#!/usr/bin/env bash
# The prepared GPU check (scripts/device_check.py says what it measures). Run from anywhere:
#
#   OUT=DIR bash scripts/device_check.sh                 # on a GPU machine: writes DIR/device_check.json and .md
#   OUT=DIR bash scripts/device_check.sh --device cpu    # the dry run on a CPU, small sizes, same two files
#
# What it uses when present in the checkout (both folders are ignored by git, so they travel only when named):
#   .whl/*.whl                    wheels of packages the machine lacks (termcolor; see docs/benchmarks.md), installed
#                                 into a scratch folder on PYTHONPATH without any network
#   .data/cifar10-jpeg.tar.xz     the CIFAR-10 JPEG archive, unpacked outside the checkout (so .data stays small
#                                 enough to carry) for the timed run
# Further arguments go to scripts/device_check.py (e.g. --sections clustering consensus).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder for device_check.json and device_check.md}"
mkdir -p "$OUT"
PYTHON=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
    site=$(mktemp -d)
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
data=()
if [ -f .data/cifar10-jpeg.tar.xz ]; then
    unpacked=${TMPDIR:-/tmp}/device_check_data
    [ -d "$unpacked/cifar10-jpeg" ] || { mkdir -p "$unpacked" && tar -xJf .data/cifar10-jpeg.tar.xz -C "$unpacked"; }
    data=(--data "$unpacked/cifar10-jpeg")
fi
export PYTHONUNBUFFERED=1
exec "$PYTHON" scripts/device_check.py --out "$OUT" "${data[@]}" "$@"
