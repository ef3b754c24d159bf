"""The real augment handler, except that some batches crash or hang, as functions can.

Lets the CLI test see a function error and a timeout for real: the worker process really
exits or really overruns the function's time limit. A batch containing a key with
"crash" in it kills the worker; "hang" sleeps past any test timeout.
"""

import importlib.util
import os
import time
from pathlib import Path

_APP = Path(__file__).resolve().parents[3] / "functions" / "augment" / "app.py"
_spec = importlib.util.spec_from_file_location("augment_app", _APP)
_app = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_app)


def handler(event, context):
    keys = " ".join(event.get("keys", []))
    if "crash" in keys:
        os._exit(3)
    if "hang" in keys:
        time.sleep(600)
    if "raise" in keys:
        raise RuntimeError("the function failed for this batch")
    return _app.handler(event, context)
