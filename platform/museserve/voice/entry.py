"""Opening a voice session: the gateway's checks and charges, bound for one caller and pool.

What a chat request goes through happens here once per session: identity (the edge's), mode
and adapter routing, validation of the conversation, the audio format. A voice conversation
holds text before the first turn (earlier speech lives in the session itself), answers in
Instant or Thinking mode, one answer at a time. Each turn then takes the pool's admission
slot and is charged one request and its prompt; its speech is charged as it arrives and its
output once it ends, like any stream (`VoiceSession`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from museserve.domain import AudioPart, ChatRequest, ImagePart, Message, Mode, Role, TextPart
from museserve.errors import FailedPrecondition, InvalidArgument
from museserve.gateway.gateway import Gateway, MetadataSink
from museserve.messages import MediaSegment
from museserve.voice.events import VoiceSettings
from museserve.voice.limits import check_format
from museserve.voice.ports import VoicePorts
from museserve.voice.session import SPEECH_PART, VoiceSession


async def open_voice(
    gateway: Gateway, settings: VoiceSettings, on_metadata: MetadataSink | None = None
) -> VoiceSession:
    """A live voice session for `settings.request`'s caller (identified by the edge); all that
    can be refused before any audio is refused here."""
    voice = gateway.config.gateway.voice
    if not voice.enabled:
        raise FailedPrecondition("voice sessions are not enabled on this service (gateway.voice.enabled)")
    request = settings.request
    _check_conversation(request)
    route = gateway.router.route(request)
    pool = route.pool.name
    request = dataclasses.replace(request, adapter=route.adapter)
    # Checked as the first turn's request: the speech stands in as the user message it will be.
    spoken = Message(Role.USER, (TextPart("speech"),))
    gateway.validate(dataclasses.replace(request, messages=(*request.messages, spoken)), route.pool)
    check_format(settings, voice, gateway.config.preprocess.media.audio_sample_rate)
    preprocessor = gateway.live_preprocessors()[pool]

    def prepare_live(turn: ChatRequest, history: Sequence[Sequence[MediaSegment]]):  # noqa: ANN202
        return preprocessor.prepare_live(turn, history)

    # The first turn's prompt, now: a model without audio or a conversation over the window is refused at once.
    prepare_live(dataclasses.replace(request, messages=(*request.messages, Message(Role.USER, (SPEECH_PART,)))), ())
    identity = request.identity

    async def charge_request(tokens: int) -> None:
        await gateway.charge(identity, tokens)

    async def charge_tokens(tokens: int) -> None:
        await gateway.quota.admit(identity, tokens, requests=0)
        gateway.observer.tokens(identity.tenant, "prompt", tokens)

    if on_metadata is not None:
        on_metadata((("x-served-by", pool), *((("x-museserve-adapter", route.adapter),) if route.adapter else ())))
    ports = VoicePorts(
        config=voice,
        media=gateway.config.preprocess.media,
        pool=gateway.pool_client(pool),
        prepare_live=prepare_live,
        admit=lambda: gateway.admitted(pool, identity.tier),
        charge_request=charge_request,
        charge_tokens=charge_tokens,
        settle=lambda tokens: gateway.settle_later(identity, tokens),
        observe_turn=lambda end, seconds: gateway.observer.voice_turn(pool, end, seconds),
        request_timeout_s=gateway.config.server.request_timeout_s,
    )
    return VoiceSession(dataclasses.replace(settings, request=request), ports)


def _check_conversation(request: ChatRequest) -> None:
    if request.prompt is not None:
        raise InvalidArgument("a voice session takes messages, not a raw prompt", field="prompt")
    if request.mode.mode is Mode.CONTEMPLATING:
        raise InvalidArgument("a voice session answers in instant or thinking mode", field="mode.mode")
    if request.sampling.n not in (None, 1):
        raise InvalidArgument("a voice session gives one answer per turn", field="sampling.n")
    if request.sampling.prompt_logprobs is not None:
        raise InvalidArgument("a voice session scores no prompt tokens", field="sampling.prompt_logprobs")
    if request.previous_response_id or request.store:
        raise InvalidArgument("a voice session keeps its own conversation", field="previous_response_id")
    for i, message in enumerate(request.messages):
        for j, part in enumerate(message.parts):
            if isinstance(part, ImagePart | AudioPart):
                raise InvalidArgument(
                    "a voice session's earlier messages hold text only", field=f"messages[{i}].content[{j}]"
                )
