"""A process's CPU time and resident memory from /proc (Linux), for the benchmarks."""

from __future__ import annotations

import os
from pathlib import Path


def proc_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds the process has used."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def proc_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no VmRSS for pid {pid}")


def named_cpu_seconds(name: str) -> float:
    """CPU seconds of every process called ``name`` (e.g. all of PostgreSQL's backends)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone meanwhile
            continue
        if text[text.index("(") + 1 : text.rindex(")")] == name:
            total += proc_cpu_seconds(int(stat.parent.name))
    return total
