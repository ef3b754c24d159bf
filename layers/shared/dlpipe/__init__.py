"""Shared core of the serverless deep-learning pipeline.

Imported by the Lambda handlers (through the shared layer) and by the orchestrator.
Modules that need TensorFlow import it lazily so the zip functions never load it.
"""

from dlpipe.shared.layer_target import check_layer_target

check_layer_target()  # before any module imports numpy: a wrong layer gets a clear message

__version__ = "0.1.0"
