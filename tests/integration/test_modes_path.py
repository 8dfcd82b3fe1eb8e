"""Reasoning modes through gRPC: Thinking streams reasoning apart; Contemplating reports
its agents and sums their usage."""

from __future__ import annotations

from museserve.client import ChatClient, build_request


def test_thinking_streams_reasoning_apart_and_counts_it(client: ChatClient) -> None:
    request = build_request("why?", mode="thinking", thinking_budget=6, max_output_tokens=4, temperature=0.0)
    events = list(client.stream(request, timeout=60))
    reasoning = [e for e in events if e.HasField("reasoning_delta")]
    usage = next(e.usage for e in events if e.HasField("usage"))
    assert reasoning and usage.reasoning_tokens >= 6  # the budget, and the marker that closed it
    first_answer = next((i for i, e in enumerate(events) if e.HasField("text_delta")), len(events))
    assert all(i < first_answer for i, e in enumerate(events) if e.HasField("reasoning_delta"))


def test_contemplating_reports_agents_and_sums_usage(client: ChatClient) -> None:
    prompt = "Plan a three-day trip to the mountains with a tight budget and two children. " * 3
    request = build_request(prompt, mode="contemplating", thinking_budget=4, max_output_tokens=4, temperature=0.0)
    request.mode.num_agents = 3
    events = list(client.stream(request, timeout=120))
    progress = [e.agent_progress for e in events if e.HasField("agent_progress")]
    assert {p.agent_index for p in progress} == {0, 1, 2}
    assert {p.agent_index for p in progress if p.done} == {0, 1, 2}
    usage = next(e.usage for e in events if e.HasField("usage"))
    single = client.chat(build_request(prompt, mode="thinking", thinking_budget=4, max_output_tokens=4), timeout=60)
    assert usage.prompt_tokens > 4 * single.usage.prompt_tokens  # three agents and the synthesis
    assert usage.cached_tokens >= 3 * 16  # agents after the first, and the synthesis, found the conversation cached
    assert usage.reasoning_tokens >= 3 * 4
    assert events[-1].HasField("finish") and events[-1].finish.model == "muse-tiny"
