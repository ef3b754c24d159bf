"""A handler for invoker tests: echoes, fails, sleeps or exits on request."""

import os
import time

WARM_STATE = {"calls": 0}


def handler(event, context):
    WARM_STATE["calls"] += 1
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
    }


def not_json(event, context):
    return {"value": object()}
