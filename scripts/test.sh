#!/usr/bin/env bash
# scripts/test.sh - build etap twice and run every test (docs/testing.md).
#
#   1. installs what is missing (cmake, gcc, make; python3-numpy and python3-pytest when
#      python/tests exists) with apt-get, as root or through passwordless sudo;
#   2. Release build in build-release/ (CUDA AUTO: the CUDA backend is compiled when nvcc
#      is found; its tests skip without a GPU) and ctest;
#   3. python/tests with /usr/bin/python3 -m pytest, ETAP_LIBRARY = the Release libetap.so;
#   4. sanitizer build in build-sanitize/ (-DETAP_CUDA=OFF -DETAP_SANITIZE=ON, Debug) and
#      ctest (the numeric tests run their small grids there).
# Ends with one line "N passed, N failed" (ctest tests + pytest tests) and exits non-zero
# when anything failed or did not build.
#
# Environment: JOBS (default: nproc), ETAP_TEST_SIZE / ETAP_TEST_SEED (passed to the tests),
# ETAP_TEST_SKIP_SANITIZE=1 skips step 4.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
REL="$ROOT/build-release"
SAN="$ROOT/build-sanitize"
PY="/usr/bin/python3"
START=$(date +%s)

passed=0
failed=0
skipped=0
problems=()

note() { printf '\n==== %s\n' "$*"; }
problem() { problems+=("$*"); printf 'PROBLEM: %s\n' "$*"; }

# ------------------------------------------------------------------------------------
# 1. prerequisites

missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
command -v make >/dev/null 2>&1 || missing+=(make)
[ -e /usr/include/stdio.h ] || missing+=(libc6-dev)
if [ -d python/tests ]; then
    "$PY" -c 'import numpy' >/dev/null 2>&1 || missing+=(python3-numpy)
    "$PY" -c 'import pytest' >/dev/null 2>&1 || missing+=(python3-pytest)
fi
if [ ${#missing[@]} -gt 0 ]; then
    note "installing: ${missing[*]}"
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            SUDO="sudo -n"
        else
            echo "missing ${missing[*]}, and not root (no passwordless sudo): install them first" >&2
            echo "0 passed, 1 failed"
            exit 1
        fi
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! $SUDO apt-get update -q || ! $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"; then
        echo "apt-get could not install ${missing[*]}" >&2
        echo "0 passed, 1 failed"
        exit 1
    fi
fi

# ------------------------------------------------------------------------------------
# ctest, with its counts added to the totals

run_ctest() { # build-dir label
    local dir="$1" label="$2" log
    log="$(mktemp)"
    note "ctest ($label)"
    (cd "$dir" && ctest --output-on-failure -j"$JOBS" 2>&1) | tee "$log"
    local rc=${PIPESTATUS[0]}
    local total fail skip
    total=$(sed -nE 's/.*tests passed, [0-9]+ tests? failed out of ([0-9]+).*/\1/p' "$log" | tail -1)
    fail=$(sed -nE 's/.*tests passed, ([0-9]+) tests? failed out of [0-9]+.*/\1/p' "$log" | tail -1)
    skip=$(grep -cE 'Test +#[0-9]+: .*\*\*\*Skipped' "$log" || true)
    rm -f "$log"
    if [ -z "$total" ] || [ -z "$fail" ]; then
        problem "ctest ($label) printed no summary (exit $rc)"
        failed=$((failed + 1))
        return
    fi
    passed=$((passed + total - fail - skip))
    failed=$((failed + fail))
    skipped=$((skipped + skip))
    if [ "$rc" != 0 ] && [ "$fail" = 0 ]; then
        problem "ctest ($label) exited with $rc"
        failed=$((failed + 1))
    fi
    [ "$fail" = 0 ] || problem "ctest ($label): $fail of $total tests failed"
}

build() { # dir label cmake-args...
    local dir="$1" label="$2"
    shift 2
    note "configure + build ($label)"
    if ! cmake -S "$ROOT" -B "$dir" "$@"; then
        problem "configure ($label) failed"
        failed=$((failed + 1))
        return 1
    fi
    if ! cmake --build "$dir" -j"$JOBS"; then
        problem "build ($label) failed"
        failed=$((failed + 1))
        return 1
    fi
    return 0
}

# ------------------------------------------------------------------------------------
# 2. Release

# tests and tools named: scripts/bench.sh configures the same directory without the tests
if build "$REL" "Release, CUDA AUTO" -DCMAKE_BUILD_TYPE=Release -DETAP_CUDA=AUTO \
    -DETAP_BUILD_TESTS=ON -DETAP_BUILD_TOOLS=ON; then
    run_ctest "$REL" "Release"
    rel_ok=1
else
    rel_ok=0
fi

# ------------------------------------------------------------------------------------
# 3. Python, before the sanitizer build: one of the package's tests unsets ETAP_LIBRARY and
#    lets it search build*/src, where the newest libetap.so must not be the ASan one (in a
#    fresh clone only build-release exists at this point)

if [ -d python/tests ]; then
    note "pytest python/tests"
    lib="$(find "$REL" -name 'libetap.so' 2>/dev/null | head -1)"
    if [ "$rel_ok" != 1 ] || [ -z "$lib" ]; then
        problem "no Release libetap.so for the Python tests"
        failed=$((failed + 1))
    else
        log="$(mktemp)"
        ETAP_LIBRARY="$lib" "$PY" -m pytest -q python/tests 2>&1 | tee "$log"
        rc=${PIPESTATUS[0]}
        summary="$(grep -E '[0-9]+ (passed|failed|errors?|skipped)' "$log" | tail -1)"
        p=$(echo "$summary" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+' || true)
        f=$(echo "$summary" | grep -oE '[0-9]+ failed' | grep -oE '[0-9]+' || true)
        e=$(echo "$summary" | grep -oE '[0-9]+ errors?' | grep -oE '[0-9]+' || true)
        s=$(echo "$summary" | grep -oE '[0-9]+ skipped' | grep -oE '[0-9]+' || true)
        rm -f "$log"
        passed=$((passed + ${p:-0}))
        failed=$((failed + ${f:-0} + ${e:-0}))
        skipped=$((skipped + ${s:-0}))
        if [ "$rc" != 0 ] && [ $((${f:-0} + ${e:-0})) = 0 ]; then
            # 5 = no tests collected; anything else without a count is a crash or a usage error
            problem "pytest exited with $rc"
            failed=$((failed + 1))
        elif [ "$rc" != 0 ]; then
            problem "pytest: ${f:-0} failed, ${e:-0} errors"
        fi
    fi
fi

# ------------------------------------------------------------------------------------
# 4. sanitizers

if [ "${ETAP_TEST_SKIP_SANITIZE:-0}" != 1 ]; then
    export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1}"
    export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
    if build "$SAN" "AddressSanitizer + UBSan, Debug, no CUDA" -DCMAKE_BUILD_TYPE=Debug \
        -DETAP_CUDA=OFF -DETAP_SANITIZE=ON; then
        run_ctest "$SAN" "sanitizers"
    fi
fi

# ------------------------------------------------------------------------------------

note "summary ($(($(date +%s) - START)) s)"
for p in "${problems[@]+"${problems[@]}"}"; do
    echo "  - $p"
done
[ "$skipped" = 0 ] || echo "$skipped skipped"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
