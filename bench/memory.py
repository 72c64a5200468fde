"""Peak memory of a command's process tree, as proportional set size (PSS): what the benchmark reports and the
memory test bounds.

PSS splits each shared page among the processes that share it, so the sum over a process tree counts every page
once. A sum of resident sizes (RSS) counts twice the pages a forked child shares with its parent (Prefect's and
TensorFlow's helpers are such children), which made one `predict` read 3.0 GB in one run and 1.45 GB in the next.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


def pss_bytes(pid: int) -> int:
    """A process's proportional set size, from /proc/PID/smaps_rollup (Linux); its RSS where that is missing."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    return psutil.Process(pid).memory_info().rss


def tree_pss_bytes(pid: int) -> int:
    """The PSS of a process and all its descendants (those that end while being read count 0)."""
    import psutil

    total = 0
    for item in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            total += pss_bytes(item.pid)
        except (OSError, psutil.Error):
            pass
    return total


def peak_of(command: list[str], cwd: Path, env: dict[str, str], interval: float = 0.1) -> tuple[float, float, str]:
    """Run `command`; its wall seconds, the peak PSS (MB) of its process tree sampled every `interval` seconds,
    and its output. A failing command is a RuntimeError with the end of its output."""
    import psutil

    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    while process.poll() is None:
        try:
            peak = max(peak, tree_pss_bytes(process.pid))
        except psutil.Error:
            pass
        time.sleep(interval)
    output = process.stdout.read()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{output[-4000:]}")
    return time.perf_counter() - started, peak / 2**20, output
