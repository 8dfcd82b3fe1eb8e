"""`museserve talk`: speak an audio file to the server over Converse, print the answer as it
streams (reasoning on stderr), then a summary line (`turn.summary_line`).

`SpeechSender.messages` is the request iterator, read on gRPC's thread; the main thread reads
the events. Invariants:
- The request stream stays open until the final answer has finished; the call is then
  cancelled, which the protocol defines as the end of the session (a half-close sent earlier
  could end the session before the answer).
- The final answer is the first one, of the latest turn, to finish without being cut off
  once all the speech was sent. Speech the server split into turns (its end-of-speech
  detection found a pause) cut the earlier answers off: those are noted, not awaited.
- With --vad-silence-ms the speech is followed by that much silence instead of
  `end_of_speech`, and no silence is sent once the server reported the end (more audio would
  open a turn). If the server has not reported it `VAD_GRACE_S` after the silence,
  `end_of_speech` is sent after all.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable, Iterator

import grpc

from museserve.client import MODES, ChatClient
from museserve.talk.speech import (
    END_OF_SPEECH,
    VAD_GRACE_S,
    Pacer,
    audio_message,
    chunk_offsets,
    pcm16_seconds,
    read_speech,
    silence,
    split_chunks,
    start_message,
)
from museserve.talk.turn import TurnRecord, summary_line
from museserve.v1 import chat_pb2 as pb

CHUNK_MS_RANGE = (1, 500)  # 500 ms of 48 kHz PCM16 is 48 000 bytes, under the server's 64 KiB default
VAD_SILENCE_MS_RANGE = (10, 5000)  # as SessionStart.server_vad_silence_ms


class SpeechSender:
    """The messages of one spoken turn: `start`, the speech chunks, then `end_of_speech` or
    (`tail`) trailing silence; after them it waits for `answered` before ending the stream."""

    def __init__(
        self, start: pb.ConverseRequest, speech: list[bytes], tail: list[bytes], sample_rate: int, realtime: bool,
        clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
    ):  # fmt: skip
        self.start, self.speech, self.tail, self.sample_rate = start, speech, tail, sample_rate
        self.pacer = Pacer(clock, sleep) if realtime else None
        self.clock = clock
        self.speech_end: float | None = None  # gRPC took the last speech chunk
        self.speech_ended = threading.Event()  # set by the reader: the server reported the end
        self.answered = threading.Event()  # set by the reader: the stream may end
        self.fell_back = False  # end_of_speech was sent because the server did not detect the end

    def messages(self) -> Iterator[pb.ConverseRequest]:
        yield self.start
        chunks = self.speech + self.tail
        offsets = chunk_offsets(chunks, self.sample_rate)
        if self.pacer is not None:
            self.pacer.start()
        for i, chunk in enumerate(chunks):
            if i == len(self.speech):
                self.speech_end = self.clock()
            if i >= len(self.speech) and self.speech_ended.is_set():
                break
            if self.pacer is not None:
                self.pacer.wait_until(offsets[i])
            yield audio_message(chunk)
        if self.speech_end is None:
            self.speech_end = self.clock()
        if not self.tail:
            yield END_OF_SPEECH
        elif not self.speech_ended.wait(VAD_GRACE_S):
            self.fell_back = True
            yield END_OF_SPEECH
        self.answered.wait()


def session_request(args: argparse.Namespace) -> pb.ChatRequest:
    """Model, mode, system message and sampling of the session; each turn's speech follows."""
    messages = [pb.Message(role=pb.ROLE_SYSTEM, content=[pb.ContentPart(text=args.system)])] if args.system else []
    sampling = pb.SamplingParams()
    for name, value in (("max_output_tokens", args.max_tokens), ("temperature", args.temperature),
                        ("seed", args.seed)):  # fmt: skip
        if value is not None:
            setattr(sampling, name, value)
    mode = pb.ModeParams(mode=MODES[args.mode])
    if args.thinking_budget is not None:
        mode.thinking_budget = args.thinking_budget
    return pb.ChatRequest(model=args.model, messages=messages, sampling=sampling, mode=mode)


def _usage_problem(args: argparse.Namespace) -> str | None:
    if not args.audio.is_file():
        return f"no such file: {args.audio}"
    low, high = CHUNK_MS_RANGE
    if not low <= args.chunk_ms <= high:
        return f"--chunk-ms must be between {low} and {high}"
    low, high = VAD_SILENCE_MS_RANGE
    if args.vad_silence_ms is not None and not low <= args.vad_silence_ms <= high:
        return f"--vad-silence-ms must be between {low} and {high}"
    return None


def _show(event: pb.ConverseEvent) -> str | None:
    """Prints an answer event: text on stdout, reasoning and tool calls on stderr. Returns the
    answer event's kind (None for other events)."""
    if event.WhichOneof("event") != "chat":
        return None
    chat = event.chat
    kind = chat.WhichOneof("event")
    if kind == "text_delta":
        print(chat.text_delta, end="", flush=True)
    elif kind == "reasoning_delta":
        print(chat.reasoning_delta, end="", file=sys.stderr, flush=True)
    elif kind == "tool_call":
        call = chat.tool_call
        print(f"[tool call {call.id}] {call.name}({call.arguments_json})", file=sys.stderr)
    return kind


def run_talk(args: argparse.Namespace) -> int:
    if problem := _usage_problem(args):
        print(problem, file=sys.stderr)
        return 2
    try:
        pcm, rate = read_speech(args.audio)
    except Exception as e:  # soundfile raises its own error types for unreadable files
        print(f"cannot read {args.audio}: {e}", file=sys.stderr)
        return 2
    if not pcm:
        print(f"{args.audio} holds no audio", file=sys.stderr)
        return 2
    tail = split_chunks(silence(args.vad_silence_ms / 1000, rate), rate, args.chunk_ms) if args.vad_silence_ms else []
    start = start_message(session_request(args), rate, args.vad_silence_ms)
    sender = SpeechSender(start, split_chunks(pcm, rate, args.chunk_ms), tail, rate, args.realtime)
    metadata = [(k, v) for k, v in (("x-api-key", args.api_key), ("x-user-id", args.user)) if v]
    client = ChatClient(args.address, metadata)
    call = client.converse(sender.messages(), timeout=args.timeout)
    turns: dict[int, TurnRecord] = {}
    reasoning_open = False  # reasoning printed on stderr since its last line break
    try:
        for event in call:
            record = turns.setdefault(event.turn, TurnRecord(event.turn))
            record.observe(event, time.monotonic())
            kind = _show(event)
            if kind not in (None, "reasoning_delta") and reasoning_open:
                print(file=sys.stderr)
                reasoning_open = False
            reasoning_open = reasoning_open or kind == "reasoning_delta"
            if event.WhichOneof("event") == "speech_ended":
                sender.speech_ended.set()
            if kind != "finish":
                continue
            print()
            if record.cut_off:
                print(f"[turn {record.turn} cut off by the speech that followed]", file=sys.stderr)
            elif record.turn == max(turns) and sender.speech_end is not None:
                record.speech_end = sender.speech_end
                if sender.fell_back:
                    print("[the server did not detect the end of speech: end_of_speech sent]", file=sys.stderr)
                print(summary_line(record, pcm16_seconds(pcm, rate)), file=sys.stderr)
                return 0
        print("error: the session ended before the answer finished", file=sys.stderr)
        return 1
    except grpc.RpcError as e:
        print(f"\nerror: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        sender.answered.set()
        call.cancel()
        client.close()
