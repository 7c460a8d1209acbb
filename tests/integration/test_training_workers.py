"""Training workers do not outlive their control plane: a server killed with -9 (or out of
memory) leaves no worker waiting for jobs forever, nor the fork server it keeps alive."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from simulator.rig.agents import wait_until

PARENT = """
import multiprocessing, os, sys
from concurrent.futures import ProcessPoolExecutor
from control_plane.training.worker import exit_with_parent

if __name__ == "__main__":
    context = multiprocessing.get_context("forkserver")
    pool = ProcessPoolExecutor(1, mp_context=context, initializer=exit_with_parent)
    print(pool.submit(os.getpid).result(), flush=True)
    sys.stdin.read()  # until the test kills this process
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is gone too
        return stat.read().split(") ")[1][0] != "Z"


def test_a_worker_exits_when_its_control_plane_is_killed() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # its resource tracker complains of the kill
        text=True,
    )
    assert parent.stdout is not None
    worker = int(parent.stdout.readline())  # it answered: now idle, waiting for a job
    assert alive(worker)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    wait_until(lambda: not alive(worker), timeout=30, what="the orphaned worker to exit")
