"""Generation policy, torch-free: the scheduler, the block manager, one `Request` record per
request with its output state, and the loop that steps an injected `StepRunner`."""
