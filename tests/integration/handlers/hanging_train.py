"""The real train handler, except that worker 1's first attempt at training hangs.

Lets the training test see a real function timeout: the worker process overruns the
function's time limit and is killed, and the orchestrator must retry it.
"""

import importlib.util
import time
from pathlib import Path

_APP = Path(__file__).resolve().parents[3] / "functions" / "train" / "app.py"
_spec = importlib.util.spec_from_file_location("train_app", _APP)
_app = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_app)


def handler(event, context):
    if event.get("action") == "train" and event.get("worker") == 1 and event.get("attempt") == 0:
        time.sleep(600)
    return _app.handler(event, context)
