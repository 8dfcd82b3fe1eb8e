"""Conversation state over gRPC: `store` and `previous_response_id` reach the domain, the
answer's `response_id` reaches ChatResponse and the stream's Finish, and a follow-up through
`GrpcChatApi` over a real gateway continues the stored conversation (another tenant: NOT_FOUND)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from museserve.api.convert import event_to_pb, request_from_pb, result_to_pb
from museserve.api.grpc_api import GrpcChatApi
from museserve.config import parse_config
from museserve.domain import ChatResult, Finish, FinishReason, Identity, Usage
from museserve.gateway.gateway import Gateway
from museserve.gateway.identity import key_digest
from museserve.messages import GenerationChunk, PreparedRequest
from museserve.v1 import chat_pb2 as pb
from tests.support import text_preprocess

RID = "resp_" + "ab" * 16


def test_the_conversation_fields_cross_the_edge():
    msg = pb.ChatRequest(
        messages=[pb.Message(role=pb.ROLE_USER, content=[pb.ContentPart(text="hi")])],
        previous_response_id=RID,
        store=True,
    )
    request = request_from_pb(msg, "r", Identity())
    assert (request.previous_response_id, request.store) == (RID, True)
    assert request_from_pb(pb.ChatRequest(), "r", Identity()).store is False
    result = ChatResult("x", "", (), Usage(), FinishReason.STOP, "m", response_id=RID)
    assert result_to_pb(result, "r").response_id == RID
    assert event_to_pb(Finish(FinishReason.STOP, "m", "", RID), "r").finish.response_id == RID


class Pool:
    def __init__(self) -> None:
        self.prompts: list[int] = []

    async def generate(self, request: PreparedRequest) -> AsyncIterator[GenerationChunk]:
        self.prompts.append(request.num_prompt_tokens)
        yield GenerationChunk(text="noted", num_new_tokens=1)
        yield GenerationChunk(finish=FinishReason.STOP, usage=Usage(request.num_prompt_tokens, 0, 0, 1))


class Context:
    """The servicer context methods GrpcChatApi uses."""

    def __init__(self, key: str) -> None:
        self.metadata = [("authorization", f"Bearer {key}")]
        self.code: grpc.StatusCode | None = None
        self.trailers: list = []

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return self.metadata

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def set_trailing_metadata(self, trailing_metadata: list) -> None:
        self.trailers = list(trailing_metadata)


async def test_a_follow_up_over_grpc_continues_the_stored_conversation():
    keys = [{"sha256": key_digest(k), "tenant": t} for k, t in (("sk-a", "a"), ("sk-b", "b"))]
    config = parse_config({"pools": [{"name": "main"}], "gateway": {"auth": "api_key", "api_keys": keys}})
    pool = Pool()
    api = GrpcChatApi(Gateway(config, text_preprocess(config), {"main": pool}))
    user = pb.Message(role=pb.ROLE_USER, content=[pb.ContentPart(text="remember: river")])
    context = Context("sk-a")
    first = await api.chat(pb.ChatRequest(messages=[user], store=True), context)
    assert first.response_id.startswith("resp_") and ("x-museserve-response-id", first.response_id) in context.trailers
    again = pb.Message(role=pb.ROLE_USER, content=[pb.ContentPart(text="which word?")])
    follow = pb.ChatRequest(messages=[again], previous_response_id=first.response_id)
    events = [e async for e in api.chat_stream(follow, Context("sk-a"))]
    assert events[-1].finish.response_id == ""  # not stored unless asked
    assert pool.prompts[1] > pool.prompts[0]  # the stored conversation came first
    other = Context("sk-b")
    refused = await api.chat(follow, other)
    assert other.code == grpc.StatusCode.NOT_FOUND and refused == pb.ChatResponse()
