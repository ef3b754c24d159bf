"""A process's peak memory, as Lambda's "Max Memory Used" counts it: one reading for workers and invokers."""

from __future__ import annotations


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process in MB (Linux's VmHWM); None where there is none.

    VmHWM rather than a sample of the RSS, so that a peak between two checks still counts; and
    not ru_maxrss, which in a spawned worker (the local invoker's) includes the parent's memory
    at the spawn. `reset_peak` starts it afresh; on Lambda it spans the execution environment.
    """
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def reset_peak() -> None:
    """Start the peak afresh (Linux), so that each invocation reports its own."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass
