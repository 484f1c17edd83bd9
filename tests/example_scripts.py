"""Example scripts (``examples/*.sh``) run as their README says, for end-to-end tests.

:func:`run_script` starts one from the repository root in its own session, with this test
run's virtualenv active (so that the script's install step finds everything installed and
installs nothing) and the ``PROXYPROTO_*`` variables of the test process removed; its
output goes to a file. :meth:`Script.stop` sends Ctrl-C (SIGINT), as a user stops it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.servers import REPOSITORY, clean_environment

__all__ = ["Script", "run_script"]


@dataclass
class Script:
    """An example script running in its own session, its output in a file."""

    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        """Everything the script and its servers wrote so far."""
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float) -> None:
        """Wait until ``text`` is in the output; fail with the output if it is not."""
        deadline = time.monotonic() + timeout
        while text not in self.output():
            assert self.process.poll() is None, f"the script exited:\n{self.output()}"
            assert time.monotonic() < deadline, f"{text!r} not printed:\n{self.output()}"
            time.sleep(0.1)

    def stop(self) -> None:
        """Ctrl-C, as a user stops it; then whatever is left of its session is killed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(5)


def run_script(argv: list[str], log: Path, env: dict[str, str]) -> Script:
    """Start an example script from the repository root, with this test's virtualenv active
    (so that its install step finds everything installed)."""
    environment = clean_environment(env)
    environment["VIRTUAL_ENV"] = sys.prefix
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment['PATH']}"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            argv,
            cwd=REPOSITORY,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Script(process, log)
