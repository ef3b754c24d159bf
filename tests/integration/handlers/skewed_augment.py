"""The real augment handler, deployed from another version of the wire contract.

For batches with a key containing "old", it renames the spec's `size` field as an older
or newer orchestrator might have sent it, so the real handler answers with its own 400:
what the CLI must then show.
"""

import importlib.util
from pathlib import Path

_APP = Path(__file__).resolve().parents[3] / "functions" / "augment" / "app.py"
_spec = importlib.util.spec_from_file_location("augment_app", _APP)
_app = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_app)


def handler(event, context):
    if any("old" in key for key in event.get("keys", [])):
        event["spec"]["sise"] = event["spec"].pop("size")
    return _app.handler(event, context)
