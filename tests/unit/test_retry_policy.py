"""The client retry policy, pure: which failures are sent again, after how long, how often."""

from __future__ import annotations

import random

import pytest

from museserve.api.grpc_status import to_grpc_status
from museserve.client import NO_RETRY, RETRYABLE_CODES, RetryPolicy, server_retry_delay_s
from museserve.errors import InvalidArgument, ResourceExhausted, Unavailable
from museserve_loadtest.http_transport import retry_after_s

STEADY = RetryPolicy(max_attempts=8, initial_backoff_s=0.25, max_backoff_s=2.0, multiplier=2.0, jitter=0.0)


def test_defaults_are_a_few_quick_attempts():
    policy = RetryPolicy()
    assert 2 <= policy.max_attempts <= 5
    assert 0 < policy.initial_backoff_s <= 1 and policy.max_backoff_s <= 10 and 0 < policy.jitter <= 1
    assert NO_RETRY.max_attempts == 1 and not NO_RETRY.retries("UNAVAILABLE", 1, output_received=False)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"initial_backoff_s": -1}, "initial_backoff_s"),
        ({"initial_backoff_s": 2, "max_backoff_s": 1}, "max_backoff_s"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"jitter": 1.5}, "jitter"),
    ],
)
def test_a_bad_policy_is_refused_naming_the_field(fields: dict, named: str):
    with pytest.raises(ValueError, match=named):
        RetryPolicy(**fields)


def test_backoff_grows_by_the_multiplier_up_to_the_cap():
    assert [STEADY.backoff_s(attempt) for attempt in range(1, 7)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]


def test_jitter_takes_up_to_its_share_off_each_backoff():
    policy = RetryPolicy(initial_backoff_s=1.0, max_backoff_s=1.0, jitter=0.5)
    rng = random.Random(7)
    delays = [policy.backoff_s(1, rng) for _ in range(500)]
    assert all(0.5 <= d <= 1.0 for d in delays)
    assert max(delays) - min(delays) > 0.4  # spread, not one value
    assert policy.backoff_s(1, random.Random(3)) == policy.backoff_s(1, random.Random(3))


def test_the_servers_delay_is_honoured_never_shortened():
    assert STEADY.delay_s(1, server_delay_s=3.0) == 3.0  # longer than the back-off, and past its cap
    assert STEADY.delay_s(3, server_delay_s=0.1) == 1.0  # the back-off is longer: clients still spread
    assert STEADY.delay_s(2) == 0.5


@pytest.mark.parametrize("code", sorted(RETRYABLE_CODES))
def test_unavailable_and_cancelled_are_retried_only_before_output(code: str):
    assert RETRYABLE_CODES == {"UNAVAILABLE", "CANCELLED"}
    assert STEADY.retries(code, 1, output_received=False)
    assert not STEADY.retries(code, 1, output_received=True)


@pytest.mark.parametrize(
    "code", ["INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "UNAUTHENTICATED", "INTERNAL", "OK"]
)
def test_other_codes_are_never_retried(code: str):
    assert not STEADY.retries(code, 1, output_received=False)


def test_attempts_are_bounded():
    policy = RetryPolicy(max_attempts=3)
    assert [policy.retries("UNAVAILABLE", attempt, False) for attempt in (1, 2, 3, 4)] == [True, True, False, False]


def test_the_retry_info_the_server_sends_is_read_back():
    """The trailers as the gateway builds them (api.grpc_status), for each error that carries a delay."""
    for error in (Unavailable("draining", retry_after_s=1.5), ResourceExhausted("limit", retry_after_s=0.25)):
        trailers = to_grpc_status(error, "rid").trailing_metadata
        assert server_retry_delay_s(trailers) == pytest.approx(error.retry_after_s)
    assert server_retry_delay_s(to_grpc_status(InvalidArgument("bad", field="x"), "rid").trailing_metadata) is None
    assert server_retry_delay_s(None) is None and server_retry_delay_s([("x-request-id", "r")]) is None


def test_http_retry_after_prefers_milliseconds_and_ignores_dates():
    assert retry_after_s({"retry-after-ms": "1500", "retry-after": "2"}) == 1.5
    assert retry_after_s({"retry-after": "2"}) == 2.0
    assert retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None
    assert retry_after_s({}) is None
