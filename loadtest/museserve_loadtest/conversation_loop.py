"""The open-loop conversation run: conversations start at their planned times whatever
happened to earlier ones; within a conversation each turn waits for the previous answer.

Invariants:
- Turn 0 is due at the conversation's start; turn k > 0 is due at the end of turn k-1 plus
  its think time. Every latency is measured from that due time (see records.py), so time
  spent behind the concurrency cap counts.
- A turn that fails ends its conversation: there is no answer for the next turn's history.
- No conversation starts at or after `duration_s`; later turns of started ones go on. At
  `duration_s + drain_timeout_s` turns in flight are cancelled (CLIENT_CANCELLED) and turns
  not yet due are never sent, so they leave no record.
- A conversation that starts in the warm-up is warm-up in all its turns.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from functools import partial

from .conversations import ConversationPlan, turn_request
from .progress import Progress
from .records import Sample, Transport
from .runner import RunConfig, RunResult, run_jobs, send_one


async def run_conversation_loop(
    plans: Sequence[ConversationPlan], transport: Transport, config: RunConfig, progress: Progress | None = None
) -> RunResult:
    """Samples come back in the order their turns were sent; `conversation` and `turn` say
    which is which. `config.rate` and `max_requests` are not read: `plans` fix the starts."""
    loop = asyncio.get_running_loop()
    start = loop.time()

    def clock() -> float:
        return loop.time() - start

    cap = asyncio.Semaphore(config.concurrency) if config.concurrency else None
    hard_stop = config.duration_s + config.drain_timeout_s
    samples: list[Sample] = []

    async def converse(plan: ConversationPlan) -> None:
        answers: list[str] = []
        previous: Sample | None = None
        for turn in range(plan.turns):
            # send_one always sets `end`: after a turn, the next one's due time is known.
            due = plan.start_s if previous is None else (previous.end or 0.0) + plan.think_times_s[turn - 1]
            if due >= hard_stop:
                return
            if (delay := due - clock()) > 0:
                await asyncio.sleep(delay)
            sample = Sample(len(samples), due, warmup=plan.start_s < config.warmup_s, conversation=plan.conversation,
                            turn=turn, answer_parts=[])  # fmt: skip
            samples.append(sample)
            await send_one(turn_request(plan, turn, answers, sample.index), sample, transport, clock, cap,
                           config.request_timeout_s)  # fmt: skip
            if not sample.ok:
                return
            answers.append(sample.answer)
            previous = sample

    jobs = ((plan.start_s, partial(converse, plan)) for plan in plans)
    return await run_jobs(jobs, samples, clock, config, progress)


def run_conversations_in_new_loop(
    plans: Sequence[ConversationPlan], transport_factory: Callable[[], Transport], config: RunConfig,
    quiet: bool = False,
) -> RunResult:  # fmt: skip
    """Runs in a fresh event loop; the transport is made inside it (gRPC aio channels bind to a loop)."""

    async def main() -> RunResult:
        transport = transport_factory()
        try:
            return await run_conversation_loop(plans, transport, config, None if quiet else Progress(sys.stderr))
        finally:
            await transport.close()

    return asyncio.run(main())
