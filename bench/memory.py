"""Peak resident memory of a command's process tree: what the benchmark reports and the memory test bounds."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


def peak_of(command: list[str], cwd: Path, env: dict[str, str], interval: float = 0.1) -> tuple[float, float, str]:
    """Run `command`; its wall seconds, the peak resident memory (MB) of its process tree sampled every
    `interval` seconds, and its output. A failing command is a RuntimeError with the end of its output."""
    import psutil

    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watched, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        try:
            peak = max(peak, sum(item.memory_info().rss for item in [watched, *watched.children(recursive=True)]))
        except psutil.Error:
            pass
        time.sleep(interval)
    output = process.stdout.read()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{output[-4000:]}")
    return time.perf_counter() - started, peak / 2**20, output
