"""Stopping the stage processes a supervisor, harness or benchmark started."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterable


def stop_processes(procs: Iterable[subprocess.Popen], timeout: float = 30.0) -> list[int]:
    """SIGTERM every live process, wait for all of them together at most ``timeout`` seconds
    (a stage stops cleanly on SIGTERM: it commits and snapshots), then SIGKILL the ones left.
    Returns the exit codes in the order given."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(deadline - time.monotonic(), 0.1)))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(p.wait())
    return codes
