"""Shared core of the serverless deep-learning pipeline.

Imported by the Lambda handlers (through the shared layer) and by the orchestrator.
Modules that need TensorFlow import it lazily so the zip functions never load it.
"""

__version__ = "0.1.0"
