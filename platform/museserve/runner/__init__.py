"""Everything that touches torch: the KV pool, the model runner, decode graphs, step inputs,
sampling, and the device thread that runs a step. Imports the plan, never the engine loop."""
