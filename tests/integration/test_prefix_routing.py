"""Prefix routing on a real local Ray cluster: a pool of 3 replicas behind the gateway, each
replica publishing its KV events, the gateway's router sending each conversation's next turn
where its history is cached. Seen by the client, as `usage.cached_tokens`.

Every conversation has a system prompt of its own, so only the replica that served its first
turn can hold any of it: a turn routed anywhere else reports 0 cached tokens. Under Serve's
default routing (two replicas at random, then the less busy, all idle here) a second turn
finds its first turn's replica one time in three."""

from __future__ import annotations

import random
import time
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
import ray

from museserve.client import ChatClient
from museserve.v1 import chat_pb2 as pb
from tests.support import eventually, kill_replica, replica_actor_names

from .conftest import ROUTED_POOL, ROUTED_REPLICAS, ROUTING_PERIOD_S, TEST_KEY, key_client

DEPLOYMENT = f"pool-{ROUTED_POOL}"
CONVERSATIONS = 6
# A router's view trails a replica by its publication period plus Serve's controller pushing
# it to the handles (a control-loop tick): wait that long before the next turn.
VIEW_S = 4 * ROUTING_PERIOD_S + 1.0
WORDS = "river stone light model token cache graph cloud music paper engine signal garden window orbit".split()


@pytest.fixture
def routed(grpc_address: str) -> Iterator[ChatClient]:
    client = key_client(grpc_address, TEST_KEY)
    yield client
    client.close()


class Conversation:
    def __init__(self, index: int) -> None:
        rng = random.Random(index)
        self.system = f"conversation {index}: " + " ".join(rng.choice(WORDS) for _ in range(160))
        self.history: list[pb.Message] = []
        self.responses: list[pb.ChatResponse] = []

    def turn(self, client: ChatClient, text: str, attempts: int = 1) -> pb.ChatResponse:
        """One user turn; the answer joins the history. `attempts`: UNAVAILABLE is retried (a
        request on a replica as it is killed)."""
        user = pb.Message(role=pb.ROLE_USER, content=[pb.ContentPart(text=text)])
        system = pb.Message(role=pb.ROLE_SYSTEM, content=[pb.ContentPart(text=self.system)])
        request = pb.ChatRequest(
            model=ROUTED_POOL,
            messages=[system, *self.history, user],
            sampling=pb.SamplingParams(max_output_tokens=6, temperature=0.0),
        )
        for attempt in range(attempts):
            try:
                response = client.chat(request, timeout=60)
                break
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or attempt == attempts - 1:
                    raise
                time.sleep(1.0)
        assistant = pb.Message(role=pb.ROLE_ASSISTANT, content=[pb.ContentPart(text=response.text)])
        self.history += [user, assistant]
        self.responses.append(response)
        return response


def _turns(client: ChatClient, conversations: list[Conversation], text: str, attempts: int = 1) -> None:
    for conversation in conversations:
        conversation.turn(client, text, attempts)


def _cached_share(conversation: Conversation, turn: int) -> float:
    """Cached tokens of `turn` over the prompt tokens of the turn before it (all of which the
    replica that served it holds, but for the last partial block)."""
    return conversation.responses[turn].usage.cached_tokens / conversation.responses[turn - 1].usage.prompt_tokens


def test_each_next_turn_lands_on_the_replica_holding_its_history(routed: ChatClient) -> None:
    conversations = [Conversation(i) for i in range(CONVERSATIONS)]
    _turns(routed, conversations, "what is the first thing?")
    assert all(c.responses[0].usage.cached_tokens == 0 for c in conversations)  # nobody held their prompts
    time.sleep(VIEW_S)
    _turns(routed, conversations, "and the second?")
    shares = [_cached_share(c, 1) for c in conversations]
    assert min(shares) >= 0.8, shares


def _router_decisions(reason: str) -> float:
    port = ray._private.worker.global_worker.node.metrics_export_port
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    prefix = "ray_museserve_router_decisions_total{"
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith(prefix) and f'model="{ROUTED_POOL}"' in line and f'reason="{reason}"' in line
    )


def test_the_gateways_router_exports_its_decisions() -> None:
    """After the test above: its second turns were prefix hits (Ray's agent exports every few seconds)."""
    eventually(lambda: _router_decisions("prefix_hit") >= CONVERSATIONS, 60, "prefix_hit decisions exported", 1.0)


def test_a_killed_replica_leaves_the_router_consistent(routed: ChatClient) -> None:
    conversations = [Conversation(100 + i) for i in range(CONVERSATIONS)]
    _turns(routed, conversations, "what is the first thing?")
    time.sleep(VIEW_S)
    victim = sorted(replica_actor_names(DEPLOYMENT))[0]  # the one kill_replica kills
    kill_replica(DEPLOYMENT)
    # ray.kill returns before the actor is gone
    eventually(lambda: victim not in replica_actor_names(DEPLOYMENT), 30, "the killed replica gone", 0.1)
    # Turns of the dead replica's conversations go elsewhere (their history is gone with it);
    # the others still find theirs.
    _turns(routed, conversations, "and the second?", attempts=5)
    shares = [_cached_share(c, 1) for c in conversations]
    assert sum(share >= 0.8 for share in shares) >= 1, shares
    eventually(lambda: len(replica_actor_names(DEPLOYMENT)) >= ROUTED_REPLICAS, 120, "the killed replica replaced", 0.5)
    time.sleep(VIEW_S)
    # The router dropped the dead replica's blocks and learned where each turn went since.
    _turns(routed, conversations, "and the third?", attempts=5)
    shares = [_cached_share(c, 2) for c in conversations]
    assert min(shares) >= 0.8, shares
