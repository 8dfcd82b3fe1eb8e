"""`museserve`: serve the platform locally, talk to it, check a config, operate a release in Kubernetes."""

from __future__ import annotations

import argparse
import secrets
import signal
import sys
import threading
from pathlib import Path

import grpc

from museserve.config import DEFAULT_CONFIG_PATH, ConfigError, load_config, read_environment
from museserve.ops.commands import add_ops_parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="museserve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve_cmd = commands.add_parser("serve", help="start local Ray and the museserve app")
    serve_cmd.add_argument("--config", help=f"YAML config (default: $MUSESERVE_CONFIG or {DEFAULT_CONFIG_PATH})")
    serve_cmd.set_defaults(func=_serve)

    chat = commands.add_parser("chat", help="send one chat request over gRPC")
    chat.add_argument("text", help="the user message")
    chat.add_argument("--address", default="127.0.0.1:50051", help="gRPC address (default %(default)s)")
    chat.add_argument("--model", default="", help="model name (default: the server's default)")
    chat.add_argument("--adapter", default="", help="a LoRA adapter of the model (default: the caller's)")
    chat.add_argument("--mode", choices=["instant", "thinking", "contemplating"], default="instant")
    chat.add_argument("--thinking-budget", type=int, help="most reasoning tokens (thinking mode)")
    chat.add_argument("--system", default="", help="a system message")
    chat.add_argument("--max-output-tokens", type=int, help="most answer tokens")
    chat.add_argument("--temperature", type=float)
    chat.add_argument("--seed", type=int)
    chat.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
    chat.add_argument("--image", action="append", type=Path, default=[], help="an image file (repeatable)")
    chat.add_argument("--audio", action="append", type=Path, default=[], help="a WAV or FLAC file (repeatable)")
    chat.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    chat.add_argument("--timeout", type=float, default=120.0, help="deadline in seconds (default %(default)s)")
    chat.add_argument("--api-key", default="", help="sent as x-api-key")
    chat.add_argument("--user", default="", help="sent as x-user-id")
    chat.set_defaults(func=_chat)

    talk = commands.add_parser("talk", help="speak an audio file to the server over Converse (live voice)")
    talk.add_argument("--audio", type=Path, required=True, help="the speech: a WAV (or FLAC) file, mixed down to mono")
    talk.add_argument("--realtime", action="store_true", help="send the speech at the pace it was spoken")
    talk.add_argument("--address", default="127.0.0.1:50051", help="gRPC address (default %(default)s)")
    talk.add_argument("--model", default="", help="model name (default: the server's default)")
    talk.add_argument("--mode", choices=["instant", "thinking"], default="instant")
    talk.add_argument("--thinking-budget", type=int, help="most reasoning tokens (thinking mode)")
    talk.add_argument("--system", default="", help="a system message")
    talk.add_argument("--max-tokens", "--max-output-tokens", dest="max_tokens", type=int, help="most answer tokens")
    talk.add_argument("--temperature", type=float)
    talk.add_argument("--seed", type=int)
    talk.add_argument("--chunk-ms", type=int, default=20, help="milliseconds of speech per chunk (default %(default)s)")
    talk.add_argument(
        "--vad-silence-ms",
        type=int,
        help="let the server detect the end of speech after this much silence (appended) instead of end_of_speech",
    )
    talk.add_argument("--timeout", type=float, default=120.0, help="deadline in seconds (default %(default)s)")
    talk.add_argument("--api-key", default="", help="sent as x-api-key")
    talk.add_argument("--user", default="", help="sent as x-user-id")
    talk.set_defaults(func=_talk)

    config_cmd = commands.add_parser("config", help="configuration tools")
    config_sub = config_cmd.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate a config file")
    check.add_argument("file", type=Path)
    check.set_defaults(func=_config_check)

    keys_cmd = commands.add_parser("keys", help="API key tools")
    keys_sub = keys_cmd.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="make a new API key and print where its hash goes")
    create.add_argument("--tenant", required=True, help="the account the key belongs to")
    create.add_argument("--tier", default="default", help="the account tier (a key of gateway.tiers)")
    create.add_argument("--prefix", default="museserve", help="Redis key prefix (gateway.redis.key_prefix)")
    create.set_defaults(func=_keys_create)

    mirror_cmd = commands.add_parser("mirror", help="shadow-mirror tools")
    mirror_sub = mirror_cmd.add_subparsers(dest="mirror_command", required=True)
    report = mirror_sub.add_parser("report", help="compare a candidate pool's mirrored answers with the primary's")
    report.add_argument("source", help="a mirror-records JSONL file or a redis:// URL")
    report.add_argument("--stream", default="museserve:mirror", help="Redis stream key (default %(default)s)")
    report.add_argument("--limit", type=int, help="read at most N records (oldest first)")
    report.add_argument("--json", type=Path, dest="json_out", help="also write the report as JSON here")
    report.add_argument("--plot", type=Path, dest="plot_out", help="write latency CDFs and length ratios as PNG")
    report.add_argument("--grader", help='command that scores pairs, JSONL on stdin and stdout (e.g. "python g.py")')
    report.add_argument("--grader-timeout", type=float, default=600.0, help="seconds (default %(default)s)")
    report.set_defaults(func=_mirror_report)

    add_ops_parser(commands)  # museserve ops status|scale|canary|drain: the kubernetes client, imported on use

    args = parser.parse_args(argv)
    return args.func(args)


def _config_check(args: argparse.Namespace) -> int:
    from museserve.preprocess.pool_model import check_pools  # deferred: reads each pool's checkpoint

    try:
        config = load_config(args.file, read_environment())  # with MUSESERVE_REDIS_URL / _API_KEYS_FILE, as served
        config = check_pools(config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    print(f"{args.file}: valid; pools:")
    for line in _pool_summary(config):
        print(f"  {line}")
    return 0


def _pool_summary(config) -> list[str]:
    """A line per pool: what it serves, from what, its context window and what sets it, its modes."""
    from museserve.preprocess.pool_model import pool_windows  # deferred: reads each pool's checkpoint

    windows = pool_windows(config)
    lines = []
    for pool in config.pools:
        m = pool.model
        source = f"dummy {m.size} weights" if m.load_format == "dummy" else f"{m.load_format} {m.path}"
        default = " (default)" if pool is config.default_pool else ""
        modes = ", ".join(pool.modes or ())
        window = windows[pool.name]
        context = f"context {window.tokens} (set by {window.bound}; KV cache {window.kv_tokens} tokens)"
        lines.append(f"{pool.name}{default}: {source}, {m.dtype}; {context}; modes {modes}")
    return lines


def _keys_create(args: argparse.Namespace) -> int:
    from museserve.gateway.identity import key_digest

    key = "sk-" + secrets.token_urlsafe(32)
    digest = key_digest(key)
    print(f"key (shown once; give it to the caller): {key}")
    print("\nin the config, under gateway.api_keys:")
    print(f"  - sha256: {digest}\n    tenant: {args.tenant}\n    tier: {args.tier}")
    print("\nor in Redis:")
    print(f"  HSET {args.prefix}:apikey:{digest} tenant {args.tenant} tier {args.tier}")
    return 0


def _gateway_summary(config) -> list[str]:
    gateway = config.gateway
    if gateway.auth == "none":
        auth = "auth         none: every caller is tenant 'anonymous' (local use only)"
    else:
        auth = (
            f"auth         API keys ({len(gateway.api_keys)} in config{', more in Redis' if gateway.redis.url else ''})"
        )
    if gateway.redis.url:
        limits = f"rate limits  in Redis ({gateway.redis.on_unavailable} when it is unreachable)"
    else:
        limits = "rate limits  in this process (no Redis configured)"
    mirrored = [f"{p.name} -> {p.mirror.candidate} ({p.mirror.fraction:.0%})" for p in config.pools if p.mirror]
    lines = [auth, limits]
    if mirrored:
        sink = "Redis stream" if gateway.redis.url else gateway.mirror_log
        lines.append(f"mirroring    {', '.join(mirrored)}; records to {sink}")
    return lines


def _mirror_report(args: argparse.Namespace) -> int:
    from museserve.mirror_report import report_command  # deferred: matplotlib and redis only here

    return report_command(
        args.source,
        stream=args.stream,
        limit=args.limit,
        json_out=args.json_out,
        plot_out=args.plot_out,
        grader=args.grader,
        grader_timeout_s=args.grader_timeout,
    )


def _serve(args: argparse.Namespace) -> int:
    env = read_environment()
    from museserve.preprocess.pool_model import check_pools
    from museserve.serve.preflight import preflight

    try:
        config = load_config(args.config or env.config_path, env)
        # Before Ray starts: a busy port or an unreadable model file fails here, in a line
        # that names it, not minutes later inside a replica.
        if problems := preflight(config):
            for problem in problems:
                print(f"museserve serve: {problem}", file=sys.stderr)
            return 1
        config = check_pools(config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1

    import ray  # deferred: `museserve chat` and `config check` never pay for importing Ray

    from museserve.logs import setup_logging
    from museserve.serve.app import drain_app, init_local_ray, run_app

    setup_logging(env.log_level)
    stop = threading.Event()
    init_local_ray(config, log_to_driver=env.log_level == "DEBUG")
    for sig in (signal.SIGINT, signal.SIGTERM):  # after Ray's start: Ray installs handlers of its own
        signal.signal(sig, lambda *_: stop.set())
    try:
        run_app(config, env.log_level)
        s = config.server
        print(f"museserve is serving {', '.join(p.name for p in config.pools)}")
        for line in _pool_summary(config):
            print(f"  {line}")
        print(f"  gRPC  127.0.0.1:{s.grpc_port}  (ChatService, grpc.health.v1, reflection; all interfaces)")
        if s.direct_grpc_enabled:
            print(f"  gRPC  {s.direct_grpc_host}:{s.direct_grpc_port}  (the same API served by the gateway itself)")
        print(
            f"  HTTP  http://{s.http_host}:{s.http_port}  (OpenAI API: /v1/chat/completions, /v1/completions, /v1/responses, /v1/models; /healthz)"
        )
        for line in _gateway_summary(config):
            print(f"  {line}")
        print("Press Ctrl-C to stop.", flush=True)
        stop.wait()
        print(
            f"draining: new requests are refused with UNAVAILABLE, requests in flight get up to "
            f"{s.drain_timeout_s:g} s (Ctrl-C again to stop at once)",
            flush=True,
        )
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.default_int_handler)
        drain_app(config)
        print("stopped", flush=True)
    except KeyboardInterrupt:
        print("stopping without draining", flush=True)
    finally:
        ray.shutdown()
    return 0


def _chat(args: argparse.Namespace) -> int:
    from museserve.client import ChatClient, build_request
    from museserve.v1 import chat_pb2 as pb

    for path in [*args.image, *args.audio]:
        if not path.is_file():
            print(f"no such file: {path}", file=sys.stderr)
            return 2
    request = build_request(
        args.text,
        system=args.system,
        model=args.model,
        adapter=args.adapter,
        mode=args.mode,
        thinking_budget=args.thinking_budget,
        max_output_tokens=args.max_output_tokens,
        temperature=args.temperature,
        seed=args.seed,
        stop=args.stop,
        images=args.image,
        audio=args.audio,
    )
    metadata = [(k, v) for k, v in (("x-api-key", args.api_key), ("x-user-id", args.user)) if v]
    client = ChatClient(args.address, metadata)
    try:
        if not args.stream:
            response = client.chat(request, timeout=args.timeout)
            if response.reasoning:
                print(f"[reasoning] {response.reasoning}", file=sys.stderr)
            for call in response.tool_calls:
                print(f"[tool call {call.id}] {call.name}({call.arguments_json})", file=sys.stderr)
            print(response.text)
            _print_usage(response.usage, response.model, pb.FinishReason.Name(response.finish_reason))
            return 0
        for event in client.stream(request, timeout=args.timeout):
            kind = event.WhichOneof("event")
            if kind == "text_delta":
                print(event.text_delta, end="", flush=True)
            elif kind == "reasoning_delta":
                print(event.reasoning_delta, end="", file=sys.stderr, flush=True)
            elif kind == "agent_progress" and event.agent_progress.done:
                progress = event.agent_progress
                print(f"[agent {progress.agent_index} done: {progress.generated_tokens} tokens]", file=sys.stderr)
            elif kind == "tool_call":
                call = event.tool_call
                print(f"[tool call {call.id}] {call.name}({call.arguments_json})", file=sys.stderr)
            elif kind == "usage":
                usage = event.usage
            elif kind == "finish":
                print()
                _print_usage(usage, event.finish.model, pb.FinishReason.Name(event.finish.reason))
        return 0
    except grpc.RpcError as e:
        print(f"\nerror: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()


def _talk(args: argparse.Namespace) -> int:
    from museserve.talk.command import run_talk  # deferred: numpy and soundfile only here

    return run_talk(args)


def _print_usage(usage, model: str, finish: str) -> None:
    print(
        f"[{model}] finish={finish.removeprefix('FINISH_REASON_').lower()} prompt={usage.prompt_tokens} "
        f"reasoning={usage.reasoning_tokens} output={usage.output_tokens}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    sys.exit(main())
