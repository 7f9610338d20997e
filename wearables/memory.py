"""Resident memory of this process, for the agent's stats and the sensor benchmark."""

from __future__ import annotations

import os
import resource
from pathlib import Path


def rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc), else the peak (getrusage)."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
