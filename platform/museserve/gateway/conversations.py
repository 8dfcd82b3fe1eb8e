"""Stored answers and the conversations they continue: `previous_response_id` and `store`.

A stored answer holds its whole conversation (the earlier turns, this turn's input, then the
answer), so a follow-up is one read, whichever gateway replica serves it. Records are keyed by
tenant: another tenant's id reads as absent (NOT_FOUND), as an expired one does. Instructions
(`ChatRequest.instructions`) apply to their own turn only and are never stored, as in OpenAI's
Responses API; system messages sent as messages are part of the conversation.

Backends: Redis (`RedisConversations`, shared by every replica and surviving restarts) or this
process's memory (`MemoryConversations`, bounded, for a single replica).

An API edge may keep its own view of a request's settings with the answer
(`ChatRequest.stored_echo`: the Responses API's tools, text format, metadata), so reading the
answer back shows them as they were sent.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import replace
from typing import Protocol, TypeVar

from redis.exceptions import RedisError

from museserve.config import ConversationsConfig
from museserve.domain import ChatRequest, ChatResult, Identity, Message, Role, TextPart
from museserve.errors import InvalidArgument, NotFound, Unavailable
from museserve.gateway.conversation_codec import StoredResponse, decode, encode, stored_size
from museserve.gateway.redis_client import build_client, close_client

T = TypeVar("T")
RESPONSE_ID = re.compile(r"resp_[0-9a-f]{32}")


def new_response_id() -> str:
    return f"resp_{uuid.uuid4().hex}"


class ConversationBackend(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes, ttl_s: float) -> None: ...

    async def delete(self, key: str) -> bool: ...

    async def close(self) -> None: ...


class MemoryConversations:
    """This process's memory: at most `max_entries`, the oldest dropped first."""

    def __init__(self, max_entries: int = 10_000):
        self._max_entries = max_entries
        self._records: OrderedDict[str, tuple[float, bytes]] = OrderedDict()  # key -> (expires, monotonic)

    async def get(self, key: str) -> bytes | None:
        entry = self._records.get(key)
        if entry is None or entry[0] <= time.monotonic():
            self._records.pop(key, None)
            return None
        return entry[1]

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        self._records[key] = (time.monotonic() + ttl_s, value)
        self._records.move_to_end(key)
        while len(self._records) > self._max_entries:
            self._records.popitem(last=False)

    async def delete(self, key: str) -> bool:
        return self._records.pop(key, None) is not None

    async def close(self) -> None:
        self._records.clear()


class RedisConversations:
    """One string per answer, with a TTL. Keys carry the tenant as the hash tag, so a cluster
    keeps a tenant's conversations in one slot. `url`: one server or a cluster (redis_client)."""

    def __init__(self, url: str, timeout_s: float, max_connections: int = 64):
        self._redis = build_client(url, timeout_s=timeout_s, max_connections=max_connections)

    async def get(self, key: str) -> bytes | None:
        return await self._redis.get(key)

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        await self._redis.set(key, value, px=max(1, int(ttl_s * 1000)))

    async def delete(self, key: str) -> bool:
        return bool(await self._redis.delete(key))

    async def close(self) -> None:
        await close_client(self._redis)


class ConversationStore:
    def __init__(self, backend: ConversationBackend, config: ConversationsConfig, key_prefix: str = "museserve"):
        self._backend = backend
        self._config = config
        self._prefix = key_prefix

    async def resolve(self, request: ChatRequest) -> ChatRequest:
        """The request as the model sees it: its instructions, the stored conversation it
        continues, then its own messages. Refuses a conversation too large to store."""
        history: tuple[Message, ...] = ()
        if request.previous_response_id:
            history = (
                await self.get(request.identity, request.previous_response_id, "previous_response_id")
            ).conversation()
        if request.store and stored_size(history + request.messages) > self._config.max_bytes:
            raise InvalidArgument(
                f"the conversation would take more than the {self._config.max_bytes} bytes a stored answer may hold",
                field="store",
            )
        head = (Message(Role.SYSTEM, (TextPart(request.instructions),)),) if request.instructions else ()
        return replace(request, messages=(*head, *history, *request.messages))

    async def save(self, asked: ChatRequest, resolved: ChatRequest, result: ChatResult, response_id: str) -> None:
        """Keeps `resolved`'s conversation (its instructions left out) and the answer. `asked`:
        the request as sent, before `resolve`."""
        messages = resolved.messages[1:] if asked.instructions else resolved.messages
        echo = json.loads(asked.stored_echo) if asked.stored_echo else None
        stored = StoredResponse.of(
            response_id, asked.identity.tenant, time.time(), messages, len(asked.messages), asked.instructions,
            asked.previous_response_id, result, echo,
        )  # fmt: skip
        await self._call(self._backend.put(self._key(asked.identity, response_id), encode(stored), self._config.ttl_s))

    async def get(self, identity: Identity, response_id: str, field: str = "response_id") -> StoredResponse:
        key = self._key(identity, response_id, field)
        data = await self._call(self._backend.get(key))
        stored = decode(data) if data is not None else None
        if stored is None or stored.tenant != identity.tenant:
            raise NotFound(f"no stored response {response_id!r} (it may have expired)", field=field)
        return stored

    async def delete(self, identity: Identity, response_id: str) -> None:
        if not await self._call(self._backend.delete(self._key(identity, response_id))):
            raise NotFound(f"no stored response {response_id!r} (it may have expired)", field="response_id")

    async def close(self) -> None:
        await self._backend.close()

    def _key(self, identity: Identity, response_id: str, field: str = "response_id") -> str:
        if not RESPONSE_ID.fullmatch(response_id):
            raise InvalidArgument("is not a response id (resp_ and 32 hex digits)", field=field)
        return f"{self._prefix}:resp:{{{identity.tenant}}}:{response_id}"

    async def _call(self, operation: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(operation, self._config.timeout_s)
        except (RedisError, OSError, TimeoutError) as e:
            raise Unavailable(
                f"stored responses cannot be reached ({type(e).__name__}); retry", retry_after_s=1.0
            ) from None


def build_conversations(config: ConversationsConfig, redis_url: str | None, key_prefix: str) -> ConversationStore:
    backend = (
        RedisConversations(redis_url, config.timeout_s) if redis_url else MemoryConversations(config.max_in_memory)
    )
    return ConversationStore(backend, config, key_prefix)
