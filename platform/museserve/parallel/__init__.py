"""Model replicas across Ray workers: tensor parallel (DeepSpeed AutoTP) inside pipeline stages.

`plan` is the pure arithmetic (layer ranges, head shards, micro-batches), `stage` builds and
runs one worker's share of the model, `tp` joins a TP group's torch.distributed world and
shards through DeepSpeed, `worker` is the Ray actor, `executor` drives a replica of them
behind the engine's `Executor` protocol, `prebuild` compiles DeepSpeed's CPU all-reduce once.
"""
