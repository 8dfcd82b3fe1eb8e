"""One 262,144-token request end to end on the default local setup (deploy/local): a local Ray
node, the gateway, the preprocess tier and the muse-tiny pool, over gRPC through the gateway's
direct port, within the server's request timeout."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from museserve.client import ChatClient, build_request
from museserve.config import parse_config
from museserve.v1 import chat_pb2 as pb
from tests.support import free_port, start_local_app

LOCAL_CONFIG = Path(__file__).resolve().parents[3] / "deploy/local/museserve.yaml"
MODEL = "muse-tiny"
OUTPUT_TOKENS = 8


def end_to_end(window: int = 262_144) -> dict:
    """A prompt of `window - OUTPUT_TOKENS` tokens and OUTPUT_TOKENS greedy tokens."""
    import ray

    data = yaml.safe_load(LOCAL_CONFIG.read_text())
    data["server"].update(grpc_port=free_port(), http_port=free_port(), direct_grpc_port=free_port())
    config = parse_config(data, source=str(LOCAL_CONFIG))
    start_local_app(config, timeout_s=300)
    client = ChatClient(f"127.0.0.1:{config.server.direct_grpc_port}")
    try:
        probe = client.count_tokens(build_request(" x", model=MODEL), timeout=60)
        overhead = probe.prompt_tokens - 1  # " x" is one token of the bundled tokenizer
        text = " x" * (window - OUTPUT_TOKENS - overhead)
        request = build_request(text, model=MODEL, max_output_tokens=OUTPUT_TOKENS, temperature=0.0)
        start = time.perf_counter()
        first = None
        usage, finish = None, None
        for event in client.stream(request, timeout=config.server.request_timeout_s):
            kind = event.WhichOneof("event")
            if kind == "text_delta" and first is None:
                first = time.perf_counter()
            elif kind == "usage":
                usage = event.usage
            elif kind == "finish":
                finish = event.finish.reason
        end = time.perf_counter()
    finally:
        client.close()
        ray.shutdown()
    assert usage is not None and finish is not None
    return {
        "prompt_tokens": usage.prompt_tokens,
        "output_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "finish": pb.FinishReason.Name(finish),
        "ttft_s": (first or end) - start,
        "latency_s": end - start,
        "request_timeout_s": config.server.request_timeout_s,
    }
