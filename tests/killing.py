"""Kill a command mid-way the way a crash or the OOM killer does: SIGKILL to its whole process group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence


def run_and_kill_when(
    arguments: Sequence[str], ready: Callable[[], bool], *, timeout: float = 240.0, settle: float = 0.0
) -> bool:
    """Start ``python -m lightning_cat *arguments`` as its own process group, wait until ``ready()``
    (or the process ends, or ``timeout`` seconds pass), ``settle`` seconds more, then SIGKILL the group.

    Returns whether the process was still running when it was killed.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "lightning_cat", *arguments],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + timeout
    while not ready() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(settle)
    alive = process.poll() is None
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    return alive
