"""The local orchestrator: fans workloads out over function invocations and reports."""
