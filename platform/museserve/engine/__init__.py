"""Generation: per-request state, sampling, detokenization and the engine loop."""
