#!/usr/bin/env bash
# bench.sh - etap's main job on a fresh machine: install what the build needs, build
# etap-bench (Release; the CUDA backend when nvcc is found), run it. Arguments go to
# etap-bench unchanged:   scripts/bench.sh            the default case
#                         scripts/bench.sh --grid --json grid.json --plot grid.png
# Environment: ETAP_BUILD_DIR (default build-release), ETAP_CUDA (AUTO, ON or OFF).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${ETAP_BUILD_DIR:-$root/build-release}"
say() { echo "bench.sh: $*" >&2; }

# ---- build dependencies -----------------------------------------------------------------
# CMake >= 3.25, a C11 compiler, make. Only what is missing is installed, with apt-get.
cmake_ok() {
    command -v cmake >/dev/null 2>&1 || return 1
    local v
    v="$(cmake --version | sed -n 's/^cmake version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')"
    set -- $v
    [ "${1:-0}" -gt 3 ] || { [ "${1:-0}" -eq 3 ] && [ "${2:-0}" -ge 25 ]; }
}
missing=()
cmake_ok || missing+=(cmake)
command -v gcc >/dev/null 2>&1 || command -v cc >/dev/null 2>&1 || missing+=(gcc)
command -v make >/dev/null 2>&1 || missing+=(make)
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]} with apt-get"
    if ! command -v apt-get >/dev/null 2>&1; then
        say "no apt-get here: install ${missing[*]} (CMake >= 3.25) by hand"; exit 1
    fi
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { say "need root or sudo for apt-get"; exit 1; }
        sudo="sudo"
    fi
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"
    cmake_ok || { say "this system's CMake is older than 3.25: install a newer one"; exit 1; }
fi

# ---- configure and build ------------------------------------------------------------------
# CMake looks for nvcc on PATH and in CUDACXX; the toolkit's usual home is often on neither.
if [ -z "${CUDACXX:-}" ] && ! command -v nvcc >/dev/null 2>&1 &&
   [ -x /usr/local/cuda/bin/nvcc ]; then
    export CUDACXX=/usr/local/cuda/bin/nvcc
fi
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DETAP_CUDA="${ETAP_CUDA:-AUTO}" \
      -DETAP_BUILD_TESTS=OFF >&2
cmake --build "$build" --target etap-bench -j "$(nproc 2>/dev/null || echo 4)" >&2

# ---- run ----------------------------------------------------------------------------------
exec "$build/tools/etap-bench" "$@"
