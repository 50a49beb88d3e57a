"""The forwarding pipeline's state machine — pure: no I/O, no clock, no randomness of its own.

A batch's life at the gateway (:data:`TRANSITIONS`)::

    state            event       next state
    RECEIVED         verified    VERIFIED
    RECEIVED         rejected    QUARANTINED
    VERIFIED         sending     FORWARDING        (file://, sftp://)
    VERIFIED         published   FORWARDED         (pull: waiting in /outbox)
    FORWARDING       delivered   FORWARDED
    FORWARDING       failed      FAILED_RETRYING
    FORWARDING       rejected    QUARANTINED
    FAILED_RETRYING  retry       FORWARDING
    FORWARDED        pulled      PULLED            (pull mode only)
    FORWARDED        erased      ERASED            (the print site's erasure certificate)
    PULLED           erased      ERASED

- ``rejected``: the envelope check failed (or the gateway's copy no longer
  matches its receipt while being sent) — the file goes to quarantine and is
  never forwarded.
- ``published``: pull mode; the batch is in the tenant's ``/outbox``, FORWARDED
  means "waiting for the contractor's pull", ``pulled`` follows its confirmation.
- ``erased``: the print site erased every copy and its signed erasure
  certificate checked out (:mod:`gateway.certificates`); it is published to
  the ward as ``/receipts/<batch>.erasure.json``. ERASED is final.
- ``failed``: the destination failed (down, refused, or holds a *different*
  batch under the same id — a conflict is an incident, never an overwrite); the
  batch is retried after a back-off, for ever (data is never dropped).

:func:`transition` is the one rule book; the state database
(:meth:`gateway.state.StateStore.transition`) refuses any move it does not allow.
:func:`next_step` says what the forwarder does with a batch, :func:`backoff_seconds`
how long it waits before the next attempt, :func:`overdue` when a failing
delivery becomes an incident.
"""

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.errors import GatewayError


class BatchState(enum.Enum):
    """What is true of a batch at the gateway (values are stored and signed: never change them)."""

    RECEIVED = "received"
    """Completely uploaded, hashed and receipted."""
    VERIFIED = "verified"
    """The envelope check passed: binary age, one scrypt stanza, size and SHA-256 as receipted."""
    FORWARDING = "forwarding"
    """A delivery to the destination is under way (after a crash: to be retried)."""
    FORWARDED = "forwarded"
    """Delivered and verified at the destination (pull mode: waiting in ``/outbox``)."""
    PULLED = "pulled"
    """Pull mode: the contractor downloaded, verified and confirmed it."""
    QUARANTINED = "quarantined"
    """Not an acceptable envelope; moved out of every account's view, never forwarded."""
    FAILED_RETRYING = "failed_retrying"
    """The last delivery failed; another attempt is scheduled."""
    ERASED = "erased"
    """The print site erased every copy; its signed erasure certificate is in /receipts."""


class Event(enum.Enum):
    """What happened to a batch; each moves it by :data:`TRANSITIONS`."""

    VERIFIED = "verified"
    REJECTED = "rejected"
    SENDING = "sending"
    PUBLISHED = "published"
    DELIVERED = "delivered"
    FAILED = "failed"
    RETRY = "retry"
    PULLED = "pulled"
    ERASED = "erased"


S = BatchState
E = Event
TRANSITIONS: Mapping[tuple[BatchState, Event], BatchState] = {
    (S.RECEIVED, E.VERIFIED): S.VERIFIED,
    (S.RECEIVED, E.REJECTED): S.QUARANTINED,
    (S.VERIFIED, E.SENDING): S.FORWARDING,
    (S.VERIFIED, E.PUBLISHED): S.FORWARDED,
    (S.FORWARDING, E.DELIVERED): S.FORWARDED,
    (S.FORWARDING, E.FAILED): S.FAILED_RETRYING,
    (S.FORWARDING, E.REJECTED): S.QUARANTINED,
    (S.FAILED_RETRYING, E.RETRY): S.FORWARDING,
    (S.FORWARDED, E.PULLED): S.PULLED,
    (S.FORWARDED, E.ERASED): S.ERASED,
    (S.PULLED, E.ERASED): S.ERASED,
}
"""Every allowed move: (state, event) → next state. Nothing else is allowed."""

TERMINAL = frozenset({S.QUARANTINED, S.ERASED})
"""States no event leaves."""
DELIVERED = frozenset({S.FORWARDED, S.PULLED})
"""States waiting for the print site's erasure certificate (``erased`` applies)."""
IN_PROGRESS = frozenset({S.RECEIVED, S.VERIFIED, S.FORWARDING, S.FAILED_RETRYING})
"""States the forwarder still has work for."""


class IllegalTransitionError(GatewayError):
    """An event that does not apply to the batch's state (a bug, or a lost race)."""

    def __init__(self, state: BatchState, event: Event | BatchState) -> None:
        label = event.value
        super().__init__(f"{label!r} is not allowed in state {state.value!r}")
        self.state = state
        self.event = event


IllegalTransition = IllegalTransitionError
"""The contract's name for :class:`IllegalTransitionError`."""


def transition(state: BatchState, event: Event) -> BatchState:
    """The state after ``event`` happens in ``state``.

    Raises:
        IllegalTransitionError: the event does not apply to the state.
    """
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransitionError(state, event) from None


def event_between(before: BatchState, after: BatchState) -> Event:
    """The event that moves ``before`` to ``after``.

    Raises:
        IllegalTransitionError: no event does.
    """
    for (state, event), target in TRANSITIONS.items():
        if state is before and target is after:
            return event
    raise IllegalTransitionError(before, after)


class Step(enum.Enum):
    """What the forwarder does next with a batch."""

    VERIFY = "verify"
    """Run the envelope check (RECEIVED with a route)."""
    NO_ROUTE = "no_route"
    """The tenant has no destination: keep it RECEIVED, raise the incident once."""
    SEND = "send"
    """Start (or restart) a delivery to a file:// or sftp:// destination."""
    PUBLISH = "publish"
    """Pull mode: put the batch into the tenant's /outbox."""
    RETRY = "retry"
    """A failed delivery is due again."""
    RESUME = "resume"
    """FORWARDING found at start-up: the attempt was interrupted; record the failure, retry."""
    CLEAR = "clear"
    """The batch is done but the gateway still holds its inbox copy: delete or quarantine it."""
    NONE = "none"
    """Nothing to do."""


@dataclass(frozen=True)
class Situation:
    """What the forwarder knows about a batch when deciding the next step."""

    state: BatchState
    has_route: bool
    pull: bool
    copy_cleared: bool
    """The gateway's inbox copy is gone (deleted, quarantined or moved to /outbox)."""


def next_step(s: Situation) -> Step:
    """Decide the forwarder's next step for a batch in situation ``s``."""
    if s.state in (S.FORWARDED, S.QUARANTINED, S.PULLED, S.ERASED):
        return Step.NONE if s.copy_cleared else Step.CLEAR
    if s.state is S.FORWARDING:
        return Step.RESUME
    if not s.has_route:
        return Step.NO_ROUTE
    if s.state is S.RECEIVED:
        return Step.VERIFY
    if s.state is S.VERIFIED:
        return Step.PUBLISH if s.pull else Step.SEND
    return Step.RETRY


def backoff_seconds(
    attempts: int, initial_seconds: float, max_seconds: float, jitter: float
) -> float:
    """Delay before the next attempt after ``attempts`` failed ones.

    ``min(max, initial * 2**(attempts-1))`` scaled by ``jitter`` — a number in
    [0.5, 1.0] the caller draws at random (so many batches failing at once do
    not retry in lock step, and the delay never exceeds ``max_seconds``).

    Raises:
        ValueError: ``jitter`` outside [0.5, 1.0] or a negative argument.
    """
    if not 0.5 <= jitter <= 1.0:
        raise ValueError("jitter must be within [0.5, 1.0]")
    if attempts < 0 or initial_seconds < 0 or max_seconds < 0:
        raise ValueError("attempts and delays must not be negative")
    exponent = min(max(attempts - 1, 0), 62)
    return min(max_seconds, initial_seconds * 2.0**exponent) * jitter


def overdue(attempts: int, age_seconds: float, max_attempts: int, max_age_minutes: int) -> bool:
    """Whether a delivery that keeps failing has become an incident (``forward_failed``)."""
    return attempts >= max_attempts or age_seconds >= max_age_minutes * 60
