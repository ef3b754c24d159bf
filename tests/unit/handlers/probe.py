"""A handler for invoker tests: echoes, allocates, fails, sleeps, spins, writes or exits on request."""

import os
import time

WARM_STATE = {"calls": 0}


def handler(event, context):
    WARM_STATE["calls"] += 1
    # Zero-filled, so every page is touched and resident; held until the handler returns.
    held = bytearray(event["allocate_mb"] * 2**20) if "allocate_mb" in event else b""
    if "sleep" in event:
        time.sleep(event["sleep"])
    spun = _spin(event["spin_cpu_s"]) if "spin_cpu_s" in event else 0.0
    if "put_bytes" in event:
        from dlpipe.shared.store import DirStore

        DirStore(event["put_bytes"][0]).put("probe/blob", bytes(event["put_bytes"][1]))
    if "fail" in event:
        raise ValueError(f"asked to fail: {event['fail']}")
    if event.get("exit"):
        os._exit(3)
    return {
        "echo": event.get("echo"),
        "request_id": context.aws_request_id,
        "function_name": context.function_name,
        "memory": context.memory_limit_in_mb,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "pid": os.getpid(),
        "calls_in_this_process": WARM_STATE["calls"],
        "env": os.environ.get("DLPIPE_DATA_URL"),
        "allocated_mb": len(held) // 2**20,
        "spun_cpu_s": spun,
    }


def _spin(seconds: float) -> float:
    """Busy for `seconds` of this thread's CPU time (however long that takes on a loaded machine)."""
    start = time.thread_time()
    total = 0
    while time.thread_time() - start < seconds:
        total += sum(range(1000))
    return time.thread_time() - start


def not_json(event, context):
    return {"value": object()}
