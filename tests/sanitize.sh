#!/usr/bin/env bash
# The C accelerator under AddressSanitizer and UndefinedBehaviorSanitizer.
#
# Builds proxyproto_mw/_speedups.c with gcc -fsanitize=address,undefined into a temporary
# directory (the installed extension is left alone), then runs tests/fuzz_speedups.py, the
# differential fuzz of that build against the pure-Python decoder, with the ASan runtime
# preloaded into Python. Exits non-zero on any mismatch or sanitizer report.
#
#   bash tests/sanitize.sh                      # 30 s of random, mutated, cut and boundary inputs
#   bash tests/sanitize.sh --seconds 600        # the longer run, on demand
#   bash tests/sanitize.sh --atheris --seconds 600   # coverage-guided (atheris), if installed
#   bash tests/sanitize.sh --seed 1234 --iterations 100000
#   SPEEDUPS_SOURCE=/tmp/copy.c bash tests/sanitize.sh   # a modified copy of _speedups.c
#
# Needs gcc with its sanitizer runtimes (Debian: gcc, libasan8, libubsan1 come with gcc 12) and
# the Python headers (python3-dev, or a Python built with them). tests/test_sanitizers.py runs a
# bounded pass of this script as part of the test suite.
#
# Notes on the set-up:
# - PYTHONMALLOC=malloc makes every Python object a malloc block that ASan watches; with
#   pymalloc's arenas, reads past a small bytes object would go unseen.
# - detect_leaks=0: CPython leaks by design at exit.
# - -fno-sanitize-recover=undefined: UBSan reports abort instead of printing and going on.
# - --atheris: atheris' libFuzzer follows the coverage of the pure-Python reference (whose
#   branches mirror the C code); the C code is not coverage-instrumented, since libFuzzer's
#   -fsanitize=fuzzer needs clang (not installed here) and gcc's -fsanitize-coverage=trace-pc
#   is refused by current libFuzzer. The extension keeps its gcc ASan/UBSan checks, served by
#   the runtime atheris ships. A mismatch or a sanitizer report stops it with a crash file.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python}
compiler=${CC:-gcc}
source_file=${SPEEDUPS_SOURCE:-proxyproto_mw/_speedups.c}  # another copy, e.g. to plant a bug

if ! command -v "$compiler" >/dev/null 2>&1; then
  echo "sanitize.sh: $compiler not found (apt-get install gcc)" >&2
  exit 2
fi
libasan=$("$compiler" -print-file-name=libasan.so)
if [ ! -e "$libasan" ]; then
  echo "sanitize.sh: no libasan.so for $compiler (apt-get install libasan8)" >&2
  exit 2
fi
include=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
suffix=$("$python" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
if [ ! -e "$include/Python.h" ]; then
  echo "sanitize.sh: no Python.h in $include (apt-get install python3-dev)" >&2
  exit 2
fi

atheris=0
for argument in "$@"; do
  [ "$argument" = "--atheris" ] && atheris=1
done
flags=(-fPIC -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
  -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers)

build=$(mktemp -d "${TMPDIR:-/tmp}/proxyproto-sanitize.XXXXXX")
trap 'rm -rf "$build"' EXIT
extension="$build/_speedups$suffix"
if [ "$atheris" = 1 ]; then
  # atheris ships clang's ASan runtime with libFuzzer in it (asan_with_fuzzer.so). gcc's own
  # libasan would take over libFuzzer's coverage hooks and blind it, so the extension is linked
  # without a runtime and its __asan_*/__ubsan_* calls resolve to the preloaded one.
  runtime=$("$python" -c 'import atheris, os; print(os.path.join(atheris.path(), "asan_with_fuzzer.so"))' 2>/dev/null || true)
  if [ -z "$runtime" ] || [ ! -e "$runtime" ]; then
    echo "sanitize.sh: --atheris needs atheris (pip install atheris), with its asan_with_fuzzer.so" >&2
    exit 2
  fi
  "$compiler" -c "${flags[@]}" -I"$include" "$source_file" -o "$build/_speedups.o"
  "$compiler" -shared "$build/_speedups.o" -o "$extension"
else
  runtime=$libasan
  "$compiler" -shared "${flags[@]}" -I"$include" "$source_file" -o "$extension"
fi
echo "built $extension from $source_file with -fsanitize=address,undefined (runtime: $runtime)"

export LD_PRELOAD="$runtime${LD_PRELOAD:+:$LD_PRELOAD}"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=86:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=87:${UBSAN_OPTIONS:-}"
export PYTHONMALLOC=malloc
export PROXYPROTO_NO_EXTENSIONS=1
status=0
corpus=()
if [ "$atheris" = 1 ]; then
  corpus=(--corpus "$build/corpus") # removed with the build
fi
"$python" tests/fuzz_speedups.py --extension "$extension" ${corpus[@]+"${corpus[@]}"} "$@" || status=$?
case $status in
  0) ;;
  86) echo "sanitize.sh: AddressSanitizer reported an error (above)" >&2 ;;
  87) echo "sanitize.sh: UndefinedBehaviorSanitizer reported an error (above)" >&2 ;;
  *) echo "sanitize.sh: the fuzz run failed with status $status" >&2 ;;
esac
exit "$status"
