"""One Converse turn as the client saw it: when its speech ended, when the server said so,
when the first answer token came, when the answer finished, and what it cost.

Times are seconds of one monotonic clock. Latencies run from `speech_end`, the moment the
client had sent the last of the turn's speech (its last chunk; `end_of_speech` follows at
once unless the server is to detect the end): the moment the speaker stopped talking. With
server end-of-speech detection they therefore include the server's silence wait.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from museserve.v1 import chat_pb2 as pb

TOKEN_EVENTS = frozenset({"text_delta", "reasoning_delta"})  # the first of either is the first token


@dataclass
class TurnRecord:
    turn: int  # as the server numbers it, from 0
    speech_end: float | None = None  # set by the sender
    speech_ended_at: float | None = None  # the server's `speech_ended` arrived
    first_token_at: float | None = None
    finish_at: float | None = None
    audio_seconds: float = 0.0  # the turn's speech, as the server counted it
    audio_tokens: int = 0
    detected: bool = False  # the server's end-of-speech detection ended the turn
    usage: pb.Usage = field(default_factory=pb.Usage)
    finish_reason: int = pb.FINISH_REASON_UNSPECIFIED
    model: str = ""

    def observe(self, event: pb.ConverseEvent, now: float) -> None:
        """Records `event` (of this turn), which arrived at `now`."""
        kind = event.WhichOneof("event")
        if kind == "speech_ended":
            ended = event.speech_ended
            self.speech_ended_at = now
            self.audio_seconds, self.audio_tokens, self.detected = (
                ended.audio_seconds,
                ended.audio_tokens,
                ended.detected,
            )
            return
        if kind != "chat":
            return
        chat_kind = event.chat.WhichOneof("event")
        if chat_kind in TOKEN_EVENTS and self.first_token_at is None:
            self.first_token_at = now
        elif chat_kind == "usage":
            self.usage.CopyFrom(event.chat.usage)
        elif chat_kind == "finish":
            self.finish_at, self.finish_reason, self.model = now, event.chat.finish.reason, event.chat.finish.model

    @property
    def finished(self) -> bool:
        return self.finish_at is not None

    @property
    def cut_off(self) -> bool:
        """Finished because new speech arrived (barge-in)."""
        return self.finish_reason == pb.FINISH_REASON_CANCELLED

    def _since_speech_end(self, at: float | None) -> float | None:
        return None if at is None or self.speech_end is None else at - self.speech_end

    @property
    def first_token_s(self) -> float | None:
        """End of speech to the first answer token: the wait a speaker notices."""
        return self._since_speech_end(self.first_token_at)

    @property
    def answer_s(self) -> float | None:
        """End of speech to the answer's finish."""
        return self._since_speech_end(self.finish_at)

    @property
    def speech_ended_s(self) -> float | None:
        """End of speech to the server's `speech_ended`."""
        return self._since_speech_end(self.speech_ended_at)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def summary_line(record: TurnRecord, sent_seconds: float) -> str:
    """The line printed after an answer: audio, the latencies from the end of speech, tokens."""
    how = "detected by the server" if record.detected else "end_of_speech"
    finish = pb.FinishReason.Name(record.finish_reason).removeprefix("FINISH_REASON_").lower()
    u = record.usage
    return (
        f"[{record.model or '?'}] turn {record.turn}: audio {sent_seconds:.2f} s sent, "
        f"{record.audio_seconds:.2f} s / {record.audio_tokens} tokens heard (end: {how}, after "
        f"{_seconds(record.speech_ended_s)})  end of speech -> first token {_seconds(record.first_token_s)}, "
        f"-> finish {_seconds(record.answer_s)}  tokens prompt={u.prompt_tokens} "
        f"reasoning={u.reasoning_tokens} output={u.output_tokens}  finish={finish}"
    )
