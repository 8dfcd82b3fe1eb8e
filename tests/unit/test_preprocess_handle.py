"""The gateway's calls to the preprocess tier are bounded: a call that Serve holds for a
replica that is not there (it died, a new one is starting) ends with UNAVAILABLE."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from museserve.domain import ChatRequest, Message, Role, TextPart
from museserve.errors import Unavailable
from museserve.serve.handles import HandlePreprocessClient


class HeldResponse:
    """Stands for a DeploymentResponse that never gets a replica: awaiting it waits forever."""

    def __init__(self) -> None:
        self.cancelled = False

    def __await__(self) -> Any:
        return asyncio.get_running_loop().create_future().__await__()

    def cancel(self) -> None:
        self.cancelled = True


class HeldMethod:
    def __init__(self) -> None:
        self.responses: list[HeldResponse] = []

    def remote(self, *args: Any) -> HeldResponse:
        self.responses.append(HeldResponse())
        return self.responses[-1]


class NoReplicaHandle:
    def __init__(self) -> None:
        self.prepare = HeldMethod()
        self.count = HeldMethod()


REQUEST = ChatRequest(request_id="r", messages=(Message(Role.USER, (TextPart("hi"),)),))


@pytest.mark.parametrize("call", ["prepare", "count"])
async def test_a_call_with_no_replica_to_take_it_is_unavailable_after_the_timeout(call: str) -> None:
    handle = NoReplicaHandle()
    client = HandlePreprocessClient(handle, timeout_s=0.2)  # type: ignore[arg-type]
    calling = asyncio.create_task(getattr(client, call)(REQUEST, "muse-tiny"))
    await asyncio.sleep(0.1)
    assert not calling.done()  # it waits for its timeout first
    with pytest.raises(Unavailable) as refused:
        await asyncio.wait_for(calling, 2.0)  # then answers: no hang
    assert "did not answer within 0.2 s" in refused.value.message and refused.value.retry_after_s
    assert getattr(handle, call).responses[0].cancelled  # Serve drops the queued call
