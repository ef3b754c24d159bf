"""How long an invocation measured here would take on Lambda: the local invoker's bill and round times.

Why: the embedded default runs N workers on however many cores this machine has, so wall
time here says little about Lambda, where every invocation has its own vCPUs. What an
invocation does costs the same CPU time on any machine, loaded or not, so the projection
starts from the CPU time the worker process spent on it (all its threads), and adds what
this machine cannot measure for Lambda, the transfers with S3:

    seconds = cpu_seconds / speedup(vcpus) + store_bytes / STORE_BYTES_PER_SECOND
    vcpus   = min(6, memory_mb / 1769)                       (Lambda: 1 vCPU per 1,769 MB)
    speedup = vcpus                     below one vCPU (a share of one)
            = 1 / (1 - p + p / vcpus)   above (Amdahl's law, p the parallel share)

p for the train function (TensorFlow) is fitted from bench/memory.py's 1- and 2-thread
rates (Fashion-MNIST 860 -> 1,426 images/s: p = 0.79; fine-tuning at 224 px 196 -> 317:
p = 0.76); Pillow and LiteRT run on one thread (p = 0). A cold start is whatever the first
invocation of a worker spent importing and tracing: it is in its CPU time.
"""

from __future__ import annotations

ONE_VCPU_MB = 1769
MAX_VCPUS = 6.0
STORE_BYTES_PER_SECOND = 70e6      # one Lambda connection to S3, roughly
PARALLEL_SHARE = {"train": 0.78}   # other functions: 0 (one thread)


def vcpus(memory_mb: float) -> float:
    """The vCPUs Lambda gives a function of `memory_mb`."""
    if memory_mb <= 0:
        raise ValueError(f"memory must be positive, not {memory_mb}")
    return min(MAX_VCPUS, memory_mb / ONE_VCPU_MB)


def speedup(cpus: float, parallel_share: float) -> float:
    """How many times faster than on one vCPU (Amdahl's law above one; a share of one below)."""
    if not 0.0 <= parallel_share <= 1.0:
        raise ValueError(f"the parallel share is between 0 and 1, not {parallel_share}")
    if cpus <= 1.0:
        return cpus
    return 1.0 / (1.0 - parallel_share + parallel_share / cpus)


def projected_seconds(cpu_seconds: float, memory_mb: float, store_bytes: int = 0,
                      parallel_share: float = 0.0) -> float:
    """An invocation's Lambda duration from its CPU time, its function's memory and its bytes to and from S3."""
    if cpu_seconds < 0 or store_bytes < 0:
        raise ValueError(f"CPU time and bytes cannot be negative ({cpu_seconds}, {store_bytes})")
    return cpu_seconds / speedup(vcpus(memory_mb), parallel_share) + store_bytes / STORE_BYTES_PER_SECOND


def projected_ms(function: str, cpu_ms: float, memory_mb: float, store_bytes: int = 0) -> float:
    """`projected_seconds` in ms, with the function's parallel share."""
    return 1000.0 * projected_seconds(cpu_ms / 1000.0, memory_mb, store_bytes, PARALLEL_SHARE.get(function, 0.0))
