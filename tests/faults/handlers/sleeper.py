"""A handler that takes its time: a worker busy when its orchestrator is killed."""

import time


def handler(event, context):
    time.sleep(float(event.get("sleep", 120)) if isinstance(event, dict) else 120)
    return {"slept": True}
