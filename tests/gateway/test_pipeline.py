"""Tests for gateway.pipeline: the pure state machine, step choice, back-off and incident rule."""

from __future__ import annotations

import itertools

import pytest

from gateway.pipeline import (
    DELIVERED,
    IN_PROGRESS,
    TERMINAL,
    TRANSITIONS,
    BatchState,
    Event,
    IllegalTransitionError,
    Situation,
    Step,
    backoff_seconds,
    event_between,
    next_step,
    overdue,
    transition,
)

S = BatchState
E = Event


def run(events: list[Event], start: BatchState = S.RECEIVED) -> list[BatchState]:
    """The states visited from ``start`` through ``events``."""
    visited = [start]
    for event in events:
        visited.append(transition(visited[-1], event))
    return visited


def test_file_or_sftp_delivery_sequence() -> None:
    """verified, sending, delivered: RECEIVED → VERIFIED → FORWARDING → FORWARDED."""
    assert run([E.VERIFIED, E.SENDING, E.DELIVERED]) == [
        S.RECEIVED,
        S.VERIFIED,
        S.FORWARDING,
        S.FORWARDED,
    ]


def test_retry_sequence_passes_through_failed_retrying() -> None:
    """Two failures then success: FORWARDING and FAILED_RETRYING alternate, then FORWARDED."""
    events = [E.VERIFIED, E.SENDING, E.FAILED, E.RETRY, E.FAILED, E.RETRY, E.DELIVERED]
    assert run(events) == [
        S.RECEIVED,
        S.VERIFIED,
        S.FORWARDING,
        S.FAILED_RETRYING,
        S.FORWARDING,
        S.FAILED_RETRYING,
        S.FORWARDING,
        S.FORWARDED,
    ]


def test_pull_sequence_ends_pulled() -> None:
    """Pull mode: published to /outbox is FORWARDED, the confirmation makes it PULLED."""
    assert run([E.VERIFIED, E.PUBLISHED, E.PULLED]) == [
        S.RECEIVED,
        S.VERIFIED,
        S.FORWARDED,
        S.PULLED,
    ]


@pytest.mark.parametrize(
    "events",
    [
        [E.VERIFIED, E.SENDING, E.DELIVERED, E.ERASED],
        [E.VERIFIED, E.PUBLISHED, E.PULLED, E.ERASED],
        [E.VERIFIED, E.PUBLISHED, E.ERASED],
    ],
)
def test_erased_follows_a_delivery_and_ends_it(events: list[Event]) -> None:
    """The print site's erasure certificate moves a delivered (or pulled) batch to ERASED, final."""
    assert run(events)[-1] is S.ERASED
    assert S.ERASED in TERMINAL
    assert {S.FORWARDED, S.PULLED} == DELIVERED
    assert {s for (s, e) in TRANSITIONS if e is E.ERASED} == DELIVERED
    for event in E:
        with pytest.raises(IllegalTransitionError):
            transition(S.ERASED, event)


@pytest.mark.parametrize(
    ("events", "end"),
    [([E.REJECTED], S.QUARANTINED), ([E.VERIFIED, E.SENDING, E.REJECTED], S.QUARANTINED)],
)
def test_quarantine_sequences(events: list[Event], end: BatchState) -> None:
    """A rejected envelope (at the check or while sent) ends QUARANTINED."""
    assert run(events)[-1] is end


def test_every_other_move_is_illegal() -> None:
    """Any (state, event) not in the table raises IllegalTransitionError naming both."""
    illegal = [(s, e) for s, e in itertools.product(S, E) if (s, e) not in TRANSITIONS]
    assert len(illegal) == len(S) * len(E) - len(TRANSITIONS)
    for state, event in illegal:
        with pytest.raises(IllegalTransitionError) as caught:
            transition(state, event)
        assert caught.value.state is state
        assert state.value in str(caught.value)


def test_no_event_leaves_a_terminal_state_and_quarantine_is_never_forwarded() -> None:
    """QUARANTINED and ERASED have no way out; QUARANTINED never reaches FORWARDING."""
    assert {s for s, _ in TRANSITIONS} & TERMINAL == set()
    assert all(
        target is not S.FORWARDING for (s, _), target in TRANSITIONS.items() if s in TERMINAL
    )
    assert IN_PROGRESS.isdisjoint(TERMINAL)


def test_conflict_is_not_a_state_change_to_anything_but_failed_retrying() -> None:
    """From FORWARDING a failure (a conflict included) can only go to FAILED_RETRYING."""
    assert transition(S.FORWARDING, E.FAILED) is S.FAILED_RETRYING
    with pytest.raises(IllegalTransitionError):
        transition(S.FORWARDING, E.SENDING)


def test_event_between_finds_the_event_or_refuses() -> None:
    """event_between inverts the table; a jump (RECEIVED → FORWARDED) is illegal."""
    for (state, event), target in TRANSITIONS.items():
        assert event_between(state, target) is event
    with pytest.raises(IllegalTransitionError):
        event_between(S.RECEIVED, S.FORWARDED)


def test_state_values_are_the_stored_strings() -> None:
    """The values stored in the database and signed in status records never change."""
    assert [s.value for s in S] == [
        "received",
        "verified",
        "forwarding",
        "forwarded",
        "pulled",
        "quarantined",
        "failed_retrying",
        "erased",
    ]


@pytest.mark.parametrize(
    ("state", "route", "pull", "cleared", "step"),
    [
        (S.RECEIVED, True, False, False, Step.VERIFY),
        (S.RECEIVED, False, False, False, Step.NO_ROUTE),
        (S.VERIFIED, True, False, False, Step.SEND),
        (S.VERIFIED, True, True, False, Step.PUBLISH),
        (S.FORWARDING, True, False, False, Step.RESUME),
        (S.FAILED_RETRYING, True, False, False, Step.RETRY),
        (S.FORWARDED, True, False, False, Step.CLEAR),
        (S.FORWARDED, True, False, True, Step.NONE),
        (S.QUARANTINED, True, False, False, Step.CLEAR),
        (S.QUARANTINED, False, False, True, Step.NONE),
        (S.PULLED, True, True, True, Step.NONE),
        (S.ERASED, True, False, False, Step.CLEAR),
        (S.ERASED, True, False, True, Step.NONE),
        (S.ERASED, False, False, False, Step.CLEAR),
        (S.ERASED, True, True, True, Step.NONE),
    ],
)
def test_next_step(state: BatchState, route: bool, pull: bool, cleared: bool, step: Step) -> None:
    """The forwarder's next step for each situation."""
    assert next_step(Situation(state, has_route=route, pull=pull, copy_cleared=cleared)) is step


def test_backoff_doubles_up_to_the_maximum_scaled_by_jitter() -> None:
    """1, 2, 4, 8 … capped at the maximum; jitter scales it down by at most half."""
    full = [backoff_seconds(n, 1.0, 10.0, 1.0) for n in range(1, 7)]
    assert full == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff_seconds(3, 1.0, 10.0, 0.5) == 2.0
    assert backoff_seconds(10_000, 1.0, 300.0, 1.0) == 300.0  # no overflow


@pytest.mark.parametrize("jitter", [0.49, 1.01])
def test_backoff_refuses_jitter_outside_half_to_one(jitter: float) -> None:
    """A jitter outside [0.5, 1.0] is a programming error."""
    with pytest.raises(ValueError, match="jitter"):
        backoff_seconds(1, 1.0, 10.0, jitter)


def test_overdue_after_attempts_or_age() -> None:
    """An incident is due at max_attempts attempts or max_age_minutes of age, not before."""
    assert not overdue(11, 60 * 119, 12, 120)
    assert overdue(12, 0, 12, 120)
    assert overdue(1, 60 * 120, 12, 120)
