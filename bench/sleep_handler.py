"""A handler that only sleeps: what is left to time is the engine that runs it."""

import time


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def handler(event: dict, context) -> dict:
    return {"slept": sleep(float(event.get("seconds", 0.05)))}
