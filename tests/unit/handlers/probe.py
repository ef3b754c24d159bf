"""A handler for invoker tests: echoes, allocates, fails, sleeps or exits on request."""

import os
import time

WARM_STATE = {"calls": 0}


def handler(event, context):
    WARM_STATE["calls"] += 1
    # Zero-filled, so every page is touched and resident; held until the handler returns.
    held = bytearray(event["allocate_mb"] * 2**20) if "allocate_mb" in event else b""
    if "sleep" in event:
        time.sleep(event["sleep"])
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
    }


def not_json(event, context):
    return {"value": object()}
