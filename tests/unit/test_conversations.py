"""ConversationStore: stored answers a follow-up continues, on the memory backend and on a real
redis-server. Resolve puts instructions, then the stored conversation, then the new turn;
save keeps the conversation (instructions left out) and the answer; tenants never see each
other's ids; a record outlives neither its TTL nor a delete; the codec refuses other versions."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from museserve.config import ConversationsConfig
from museserve.domain import (
    ChatRequest,
    ChatResult,
    FinishReason,
    Identity,
    ImagePart,
    Message,
    Role,
    TextPart,
    ToolCall,
    Usage,
)
from museserve.errors import InvalidArgument, NotFound, Unavailable
from museserve.gateway.conversation_codec import StoredResponse, decode, encode
from museserve.gateway.conversations import (
    ConversationStore,
    MemoryConversations,
    RedisConversations,
    build_conversations,
    new_response_id,
)
from tests.redis_server import RedisServer

ALICE, BOB = Identity("alice", "u1"), Identity("bob", "u2")
CONFIG = ConversationsConfig(ttl_s=60, max_bytes=4096, timeout_s=2)


def user(text: str) -> Message:
    return Message(Role.USER, (TextPart(text),))


def asked(*messages: Message, identity: Identity = ALICE, **fields) -> ChatRequest:
    return ChatRequest(request_id="r", messages=messages, identity=identity, store=True, **fields)


def result(text: str = "hello", **fields) -> ChatResult:
    usage = Usage(prompt_tokens=5, cached_tokens=2, reasoning_tokens=1, output_tokens=3)
    return ChatResult(text, fields.pop("reasoning", ""), fields.pop("tool_calls", ()), usage, FinishReason.STOP,
                      "muse-tiny", **fields)  # fmt: skip


async def turn(store: ConversationStore, request: ChatRequest, answer: ChatResult) -> str:
    """What the gateway does around one stored answer."""
    resolved = await store.resolve(request)
    response_id = new_response_id()
    await store.save(request, resolved, answer, response_id)
    return response_id


@pytest.fixture
def store() -> ConversationStore:
    return ConversationStore(MemoryConversations(), CONFIG)


async def test_a_follow_up_continues_the_conversation_and_instructions_are_not_carried(store: ConversationStore):
    first = await turn(store, asked(user("hi"), instructions="be brief"), result("hello"))
    follow = asked(user("and then?"), previous_response_id=first, instructions="be long")
    resolved = await store.resolve(follow)
    assert [(m.role, m.text) for m in resolved.messages] == [
        (Role.SYSTEM, "be long"),  # this turn's instructions only
        (Role.USER, "hi"),
        (Role.ASSISTANT, "hello"),
        (Role.USER, "and then?"),
    ]
    stored = await store.get(ALICE, first)
    assert stored.instructions == "be brief" and stored.num_input_messages == 1
    assert [m.text for m in stored.messages] == ["hi"] and stored.text == "hello"
    assert stored.usage == Usage(5, 2, 1, 3) and stored.tenant == "alice"


async def test_each_record_holds_the_whole_conversation_and_its_own_input(store: ConversationStore):
    call = ToolCall("call_1", "get", '{"x": 1}')
    first = await turn(store, asked(user("one")), result("", tool_calls=(call,)))
    tool = Message(Role.TOOL, (TextPart("42"),), tool_call_id="call_1")
    second = await turn(store, asked(tool, user("two"), previous_response_id=first), result("done"))
    stored = await store.get(ALICE, second)
    assert [m.role for m in stored.messages] == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.USER]
    assert stored.messages[1].tool_calls == (call,) and stored.previous_response_id == first
    assert [m.text for m in stored.input_messages()] == ["42", "two"]
    assert [m.text for m in stored.conversation()][-1] == "done"


async def test_another_tenants_id_is_not_found_and_delete_is_per_tenant(store: ConversationStore):
    first = await turn(store, asked(user("secret")), result())
    with pytest.raises(NotFound) as caught:
        await store.resolve(asked(user("x"), identity=BOB, previous_response_id=first))
    assert caught.value.field == "previous_response_id"
    with pytest.raises(NotFound):
        await store.get(BOB, first)
    with pytest.raises(NotFound):
        await store.delete(BOB, first)
    await store.get(ALICE, first)  # still there
    await store.delete(ALICE, first)
    with pytest.raises(NotFound):
        await store.get(ALICE, first)
    with pytest.raises(NotFound):
        await store.delete(ALICE, first)


async def test_an_id_that_is_not_one_is_invalid(store: ConversationStore):
    for bad in ("resp_123", "../../x", "resp_" + "g" * 32, "resp_" + "A" * 32):
        with pytest.raises(InvalidArgument) as caught:
            await store.get(ALICE, bad)
        assert caught.value.field == "response_id"


async def test_a_conversation_over_max_bytes_is_refused_before_any_work(store: ConversationStore):
    big = user("x" * CONFIG.max_bytes)
    with pytest.raises(InvalidArgument) as caught:
        await store.resolve(asked(big))
    assert caught.value.field == "store"
    await store.resolve(replace(asked(big), store=False))  # not stored: no bound here


async def test_a_record_expires_after_its_ttl():
    store = ConversationStore(MemoryConversations(), CONFIG.model_copy(update={"ttl_s": 0.05}))
    first = await turn(store, asked(user("hi")), result())
    await store.get(ALICE, first)
    await asyncio.sleep(0.1)
    with pytest.raises(NotFound):
        await store.get(ALICE, first)


async def test_memory_keeps_at_most_max_entries():
    store = ConversationStore(MemoryConversations(max_entries=2), CONFIG)
    ids = [await turn(store, asked(user(str(i))), result()) for i in range(3)]
    with pytest.raises(NotFound):
        await store.get(ALICE, ids[0])  # the oldest went first
    assert (await store.get(ALICE, ids[2])).messages[0].text == "2"


async def test_a_stored_answer_keeps_its_requests_echo(store: ConversationStore):
    with_echo = await turn(store, replace(asked(user("hi")), stored_echo='{"metadata":{"k":"v"}}'), result())
    without = await turn(store, asked(user("hi")), result())
    assert (await store.get(ALICE, with_echo)).echo == {"metadata": {"k": "v"}}
    assert (await store.get(ALICE, without)).echo == {}


def test_the_codec_round_trips_media_and_reads_no_other_version():
    image = ImagePart(data=b"\x89PNG", mime_type="image/png")
    stored_request = asked(Message(Role.USER, (TextPart("look"), image, ImagePart(url="https://x/y.png"))))
    stored = StoredResponse.of(new_response_id(), "alice", 1.5, stored_request.messages, 1, "sys", "", result("ok"),
                               {"tools": []})  # fmt: skip
    assert decode(encode(stored)) == stored
    record = json.loads(encode(stored))
    record["v"] = 99
    assert decode(json.dumps(record).encode()) is None


# ---- the Redis backend, against a real redis-server ----


@pytest.fixture(scope="module")
def redis() -> AsyncIterator[RedisServer]:
    with RedisServer() as server:
        yield server


async def test_redis_backend_shares_records_between_stores_and_keys_them_by_tenant(redis: RedisServer):
    one = build_conversations(CONFIG, redis.url, "museserve-test")
    two = build_conversations(CONFIG, redis.url, "museserve-test")  # another gateway replica
    try:
        first = await turn(one, asked(user("hi"), instructions="sys"), result("hello"))
        resolved = await two.resolve(asked(user("next"), previous_response_id=first))
        assert [m.text for m in resolved.messages] == ["hi", "hello", "next"]
        key = f"museserve-test:resp:{{alice}}:{first}"
        assert redis.command("EXISTS", key).startswith(b":1")
        ttl_ms = int(redis.command("PTTL", key)[1:].split(b"\r")[0])
        assert 0 < ttl_ms <= CONFIG.ttl_s * 1000
        with pytest.raises(NotFound):
            await two.get(BOB, first)
        await two.delete(ALICE, first)
        with pytest.raises(NotFound):
            await one.get(ALICE, first)
    finally:
        await one.close()
        await two.close()


async def test_redis_records_expire_with_their_ttl(redis: RedisServer):
    store = ConversationStore(RedisConversations(redis.url, 2.0), CONFIG.model_copy(update={"ttl_s": 0.2}))
    try:
        first = await turn(store, asked(user("hi")), result())
        await store.get(ALICE, first)
        await asyncio.sleep(0.4)
        with pytest.raises(NotFound):
            await store.get(ALICE, first)
    finally:
        await store.close()


async def test_an_unreachable_redis_is_unavailable():
    config = CONFIG.model_copy(update={"timeout_s": 0.5})
    store = build_conversations(config, "redis://127.0.0.1:1/0", "museserve-test")
    try:
        with pytest.raises(Unavailable):
            await store.get(ALICE, new_response_id())
    finally:
        await store.close()
