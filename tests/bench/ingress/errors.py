"""Rich error details per path, and how a stream's final status must be set to cross Ray's ingress."""

from __future__ import annotations

import time
import uuid

from tests.bench.ingress.modes import LIMITED_KEY, TIMEOUT_S, client_for, path_address

PROBE_APP = "status-probe"
PROBE_STYLES = ("raise", "return")


def error_outcome(call, expected_code: str, expected_detail: str) -> dict:
    import grpc
    from grpc_status import rpc_status

    try:
        call()
    except grpc.RpcError as e:
        trailing = tuple(e.trailing_metadata() or ())
        keys = sorted({k for k, _ in trailing})
        out = {
            "code": e.code().name,
            "message": (e.details() or "")[:300],
            "trailing_keys": keys,
            "status_details_bin": "grpc-status-details-bin" in keys,
        }
        try:
            status = rpc_status.from_call(e)
            out["detail_types"] = [d.type_url.rsplit(".", 1)[-1] for d in status.details] if status else []
        except ValueError as ve:
            out["detail_types"] = []
            out["from_call_error"] = str(ve)[:300]
        out["intact"] = out["code"] == expected_code and expected_detail in out["detail_types"]
        return out
    return {"code": "OK", "intact": False}


def stream_all(client, request) -> None:
    for _ in client.stream(request, timeout=TIMEOUT_S):
        pass


def bench_errors(address: str) -> dict:
    from museserve.client import build_request

    def over_limit():
        return build_request("hi", max_output_tokens=1_000_000)

    def one_token():
        return build_request("hi", max_output_tokens=1)

    out: dict[str, dict] = {}
    client = client_for(address)
    out["invalid_argument_stream"] = error_outcome(
        lambda: stream_all(client, over_limit()), "INVALID_ARGUMENT", "BadRequest"
    )
    out["invalid_argument_unary"] = error_outcome(
        lambda: client.chat(over_limit(), timeout=TIMEOUT_S), "INVALID_ARGUMENT", "BadRequest"
    )
    client.close()

    limited = client_for(address, LIMITED_KEY, user=f"limited-{uuid.uuid4().hex[:8]}")
    for _ in range(2):  # the tier's burst
        limited.chat(one_token(), timeout=TIMEOUT_S)
    out["resource_exhausted_stream"] = error_outcome(
        lambda: stream_all(limited, one_token()), "RESOURCE_EXHAUSTED", "RetryInfo"
    )
    out["resource_exhausted_unary"] = error_outcome(
        lambda: limited.chat(one_token(), timeout=TIMEOUT_S), "RESOURCE_EXHAUSTED", "RetryInfo"
    )
    limited.close()

    stranger = client_for(address, "sk-not-a-key")
    out["unauthenticated_stream"] = error_outcome(
        lambda: stream_all(stranger, build_request("hi")), "UNAUTHENTICATED", "ErrorInfo"
    )
    stranger.close()
    return out


def probe_app():
    """A second app: ChatStream sets RESOURCE_EXHAUSTED with rich details (as the gateway
    does) before any event, then raises (the gateway's `RpcFailed`) or returns. Its replica
    takes no CPU."""
    from ray import serve

    @serve.deployment(name="status-probe", num_replicas=1, ray_actor_options={"num_cpus": 0})
    class StatusProbe:
        async def ChatStream(self, request, grpc_context):
            from museserve.api.grpc_status import to_grpc_status
            from museserve.errors import ResourceExhausted

            status = to_grpc_status(ResourceExhausted("probe: over the limit", retry_after_s=2.0), "probe")
            grpc_context.set_code(status.code)
            grpc_context.set_details(status.details)
            grpc_context.set_trailing_metadata(list(status.trailing_metadata))
            if request.messages[0].content[0].text == "raise":
                raise RuntimeError("probe: the stream ends with an exception")
            return
            yield  # an async generator that ends before its first event

    return StatusProbe.bind()


def bench_probe(path: str, config) -> dict:
    """Each style of ending a stream, through `path` to the probe app."""
    from museserve.client import build_request

    client = client_for(path_address(path, config, PROBE_APP))
    client.metadata = (*client.metadata, ("application", PROBE_APP))

    def outcome(style: str) -> dict:
        return error_outcome(lambda: stream_all(client, build_request(style)), "RESOURCE_EXHAUSTED", "RetryInfo")

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # routes to a new app appear a moment after it runs
        if outcome("raise")["code"] not in ("UNAVAILABLE", "NOT_FOUND", "UNIMPLEMENTED"):
            break
        time.sleep(0.5)
    try:
        return {style: outcome(style) for style in PROBE_STYLES}
    finally:
        client.close()
