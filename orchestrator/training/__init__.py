"""Training on the orchestrator's side: the round loop, its plan, hyper-parameters, capacity, aggregation and report."""
