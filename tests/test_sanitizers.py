"""The C accelerator under AddressSanitizer and UndefinedBehaviorSanitizer, bounded.

Runs ``tests/sanitize.sh`` (a gcc build of ``_speedups.c`` with
``-fsanitize=address,undefined``, then the differential fuzz of ``tests/fuzz_speedups.py``
against the pure-Python decoder) for at most 40 seconds, and its coverage-guided mode for
15 seconds where atheris is installed. Any mismatch or sanitizer report fails the test with
the script's output. ``bash tests/sanitize.sh --seconds 600`` is the
longer run, on demand. Skipped only where gcc, its ASan runtime or Python's headers are
missing (CI installs them: gcc, libasan8, libubsan1, python3-dev).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "sanitize.sh"
SECONDS = 40
"""The fuzz budget; building takes a few seconds more."""


def missing_tools() -> str | None:
    """Why the sanitizer build cannot run here, or None."""
    compiler = os.environ.get("CC", "gcc")
    if shutil.which(compiler) is None:
        return f"{compiler} is not installed (apt-get install gcc)"
    runtime = subprocess.run(
        [compiler, "-print-file-name=libasan.so"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if not Path(runtime).is_file():
        return f"{compiler} has no libasan.so (apt-get install libasan8)"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        return "Python.h is missing (apt-get install python3-dev)"
    return None


@pytest.mark.timeout(SECONDS + 60)
def test_accelerator_matches_python_under_asan_and_ubsan() -> None:
    reason = missing_tools()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the sanitizer build: {reason}")
        pytest.skip(reason)
    environment = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", str(SCRIPT), "--seconds", str(SECONDS)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=SECONDS + 50,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "with -fsanitize=address,undefined" in output
    summary = output.strip().splitlines()[-1]
    assert summary.endswith(", 0 mismatches"), output[-6000:]
    inputs, _, rest = summary.partition(" inputs in ")
    decoded_in_c = int(rest.split(", ")[1].split()[0])
    # The run reached the C code often, not only the fallback.
    assert int(inputs) > 10_000 and decoded_in_c > 1_000, summary


GUIDED_SECONDS = 15


@pytest.mark.timeout(GUIDED_SECONDS + 60)
def test_coverage_guided_fuzz_under_asan_and_ubsan() -> None:
    reason = missing_tools()
    if reason is None and importlib.util.find_spec("atheris") is None:
        reason = "atheris is not installed (pip install atheris)"
    if reason is not None:
        pytest.skip(reason)
    result = subprocess.run(
        ["bash", str(SCRIPT), "--atheris", "--seconds", str(GUIDED_SECONDS)],
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=GUIDED_SECONDS + 50,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "asan_with_fuzzer.so" in output
    assert "Done " in output and " runs in " in output, output[-3000:]
