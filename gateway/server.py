"""The drop service's listener: accepting, capping, timing out and stopping connections.

Threads:

- the caller's thread runs :meth:`DropServer.serve_forever` — the accept loop
  (a selector over the listening socket and a wake-up pipe);
- one *reaper* thread ticks every :data:`TICK_SECONDS` over all connections:
  it notices logins (see below), cuts connections not logged in within
  ``login_grace_seconds`` and sessions idle for ``idle_timeout_seconds``, and
  audits ``connection_closed`` when a transport has ended;
- paramiko runs one thread per connection (the Transport) and one per SFTP
  channel (the subsystem), see :mod:`gateway.sftp_server`.

How a login is recognised: the key callback in :mod:`gateway.sftp_server` runs
*before* paramiko verifies the client's signature, so it never marks anyone as
logged in. A connection counts as logged in only once paramiko itself reports
the transport authenticated (``Transport.is_authenticated()``), for the same
user whose password step passed and whose key was accepted.
:meth:`DropServer.confirm_login` checks exactly that; it runs from the reaper
tick and, synchronously, before any channel is granted, so no channel can ever
open for a connection that is not confirmed (and counted against
``max_sessions_per_account``). It audits ``login_succeeded`` once. Every
:data:`ACCOUNT_CHECK_SECONDS` the reaper re-reads the accounts logged in: a
session of an account locked by ``user lock`` or removed since is closed
(``connection_closed`` with reason ``account_locked`` / ``account_removed``).

Caps, refused at accept with ``connection_refused``: ``max_connections_per_source``
(open connections from one address) and ``max_unauthenticated`` (connections not
yet logged in, all sources). ``max_sessions_per_account`` (logged-in connections
per account) is checked at the key step and again when the login is confirmed.

Slowloris: when ``max_unauthenticated`` is reached, a new connection is not
refused outright if an *idle* waiting connection can make room — one older than
:data:`EVICT_AFTER_SECONDS`, with no login step running or passed, from the
address holding the most waiting connections (the oldest of them), and only if
that address holds at least as many as the newcomer's would. It is closed
(``connection_closed``, reason ``evicted_idle``) and the newcomer takes its
place, so idle connections cannot keep a ward out while they last; the cap
still holds. A connection whose password step failed
:data:`gateway.sftp_server.MAX_PASSWORD_FAILURES` times is closed (``too_many_auth_failures``).

Password checks (an argon2id hash each) pass through :class:`LoginGate`: a few
at a time, addresses without recent failures first, so a flood of wrong logins
queues behind itself and not in front of a ward.

Background services (the forwarder and the file watcher in ``serve``) are
started by :meth:`DropServer.serve_forever` once the completion recovery has
run, and stopped by it after the connections are closed, in reverse order.

:meth:`DropServer.stop` (SIGTERM/SIGINT in ``serve``) closes the listener and
every transport, waits for SFTP threads to close their files (open uploads stay
``.part``), stops the services, audits ``server_stopped`` and leaves closing
the gateway (final audit checkpoint) to the caller.
"""

import contextlib
import heapq
import itertools
import os
import secrets
import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway import sftp_server
from gateway.app import Gateway
from gateway.state import ROLE_FORWARDER, Account

TICK_SECONDS = 0.05
"""How often the reaper looks at every connection."""
ACCOUNT_CHECK_SECONDS = 1.0
"""How often the reaper re-reads logged-in accounts: a locked or removed one is cut."""
STOP_GRACE_SECONDS = 30.0
"""How long :meth:`DropServer.stop` waits for connection threads to finish."""
LISTEN_BACKLOG = 128
EVICT_AFTER_SECONDS = 2.0
"""Age after which an idle waiting connection may make room for a new one (slowloris)."""
LOGIN_SLOTS = max(2, os.cpu_count() or 2)
"""Password checks run at once (as many as :mod:`gateway.accounts` hashes at once)."""
PENALTY_WINDOW_SECONDS = 60.0
"""How long a failed login weighs on its address's place in the :class:`LoginGate` queue."""
PENALTY_SOURCES = 4096
"""Addresses the gate remembers failures of (the most failing are kept)."""
GATE_WAIT_TICK = 0.25
"""How often a queued password check looks whether its connection was cut."""


class LoginGate:
    """Admits password checks :data:`LOGIN_SLOTS` at a time, least failing addresses first.

    A password check costs an argon2id hash (about 0.15 s of one core). Under a
    flood of wrong logins the checks queue; first come, first served, a ward
    would wait behind every queued guess. Here waiters are ordered by the failed
    logins their address had in the last one to two minutes, then by arrival, so
    an address that has not been failing goes first and waits at most for the
    checks already running. A waiter whose connection is cut gives up.
    """

    def __init__(
        self, slots: int = LOGIN_SLOTS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._slots = slots
        self._clock = clock
        self._cond = threading.Condition()
        self._running = 0
        self._queue: list[tuple[int, int]] = []
        self._tickets = itertools.count()
        self._failures: dict[str, tuple[int, int, int]] = {}

    def _window(self) -> int:
        return int(self._clock() // PENALTY_WINDOW_SECONDS)

    def penalty(self, ip: str) -> int:
        """Failed logins of ``ip`` in this window and the one before."""
        with self._cond:
            return self._penalty(ip, self._window())

    def _penalty(self, ip: str, window: int) -> int:
        seen = self._failures.get(ip)
        if seen is None or seen[0] < window - 1:
            return 0
        return seen[1] + seen[2] if seen[0] == window else seen[1]

    def enter(self, ip: str, cancelled: Callable[[], bool]) -> bool:
        """Wait for a slot; False (no slot taken) once ``cancelled()`` says to give up."""
        with self._cond:
            ticket = (self._penalty(ip, self._window()), next(self._tickets))
            heapq.heappush(self._queue, ticket)
            while self._running >= self._slots or self._queue[0] != ticket:
                if cancelled():
                    self._queue.remove(ticket)
                    heapq.heapify(self._queue)
                    self._cond.notify_all()
                    return False
                self._cond.wait(GATE_WAIT_TICK)
            heapq.heappop(self._queue)
            self._running += 1
            self._cond.notify_all()
            return True

    def leave(self) -> None:
        """Give the slot taken by :meth:`enter` back."""
        with self._cond:
            self._running -= 1
            self._cond.notify_all()

    def failed(self, ip: str) -> None:
        """Note a failed login from ``ip`` (it queues later for a while)."""
        with self._cond:
            window = self._window()
            seen = self._failures.get(ip)
            if seen is None or seen[0] < window - 1:
                self._failures[ip] = (window, 1, 0)
            elif seen[0] == window - 1:
                self._failures[ip] = (window, 1, seen[1])
            else:
                self._failures[ip] = (window, seen[1] + 1, seen[2])
            if len(self._failures) > PENALTY_SOURCES:
                kept = sorted(
                    (item for item in self._failures.items() if item[1][0] >= window - 1),
                    key=lambda item: -self._penalty(item[0], window),
                )
                self._failures = dict(kept[: PENALTY_SOURCES // 2])


class Service(Protocol):
    """A background part of the server (the forwarder, the file watcher)."""

    def start(self) -> None:
        """Start working (returns at once)."""

    def stop(self) -> None:
        """Stop working and wait for it; idempotent."""


@dataclass(eq=False)
class Connection:
    """One accepted TCP connection and what is known about it so far."""

    session: str
    ip: str
    port: int
    accepted_at: float = field(default_factory=time.monotonic)
    last_activity: float = field(default_factory=time.monotonic)
    lock: threading.RLock = field(default_factory=threading.RLock)
    transport: Any = None
    negotiated: bool = False
    password_user: str | None = None
    account: Account | None = None
    key_fingerprint: str | None = None
    logged_in: bool = False
    close_reason: str | None = None
    evicted: bool = False
    password_failures: int = 0
    channels: int = 0
    sftp_sessions: int = 0
    busy: int = 0
    threads: list[threading.Thread] = field(default_factory=list)

    @property
    def source(self) -> str:
        """``ip:port`` of the peer (IPv6 in brackets)."""
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{host}:{self.port}"

    def fields(self) -> dict[str, object]:
        """The common audit fields of this connection."""
        out: dict[str, object] = {"source": self.source, "session": self.session}
        if self.account is not None:
            out["user"] = self.account.name
            out["tenant"] = self.account.tenant
        return out

    def touch(self) -> None:
        """Note activity (resets the idle timer)."""
        self.last_activity = time.monotonic()

    def close(self, reason: str) -> None:
        """Cut the connection, remembering the first reason given."""
        with self.lock:
            if self.close_reason is None:
                self.close_reason = reason
            transport = self.transport
        if transport is not None:
            transport.close()


class DropServer:
    """The SFTP drop service: bind, serve until stopped, stop."""

    def __init__(
        self,
        gateway: Gateway,
        host: str,
        port: int,
        *,
        services: Sequence[Service] = (),
        on_pulled: sftp_server.PullHook | None = None,
    ) -> None:
        """Prepare to listen on ``host:port`` (port 0 picks a free one).

        Args:
            gateway: The built gateway.
            host: Address to bind.
            port: Port to bind (0: any free one).
            services: Started after start-up recovery, stopped at shutdown.
            on_pulled: The pull-confirmation hook (the forwarder's); None refuses them.
        """
        self.gateway = gateway
        self._services = tuple(services)
        self._on_pulled = on_pulled
        self._address = (host, port)
        self._cfg = gateway.config.server
        self._lock = threading.Lock()
        self._connections: set[Connection] = set()
        self._per_source: dict[str, int] = {}
        self._per_account: dict[str, int] = {}
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._listener: socket.socket | None = None
        self._reaper = threading.Thread(target=self._reap_loop, name="reaper", daemon=True)
        self.login_gate = LoginGate()
        self.host_key = sftp_server.server_host_key(gateway.host_key)

    # -- lifecycle ---------------------------------------------------------------------------

    def bind(self) -> tuple[str, int]:
        """Open the listening socket; return the bound (host, port).

        Raises:
            OSError: the address cannot be bound.
        """
        host, port = self._address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
            listener.listen(LISTEN_BACKLOG)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        bound = listener.getsockname()
        return host, int(bound[1])

    def serve_forever(self) -> None:
        """Accept connections until :meth:`stop`; then close everything down."""
        listener = self._listener
        if listener is None:
            raise RuntimeError("bind() first")
        host, port = listener.getsockname()[:2]
        try:
            self.gateway.audit.emit("server_started", listen=f"{host}:{port}", pid=os.getpid())
            recovered = self.gateway.completer.recover()
            if recovered:
                self.gateway.audit.emit("server_recovered", files=recovered)
            self._reaper.start()
            for service in self._services:
                service.start()
            with selectors.DefaultSelector() as selector:
                selector.register(listener, selectors.EVENT_READ)
                selector.register(self._wake_r, selectors.EVENT_READ)
                while not self._stopping.is_set():
                    for key, _ in selector.select(timeout=1.0):
                        if key.fileobj is listener:
                            self._accept(listener)
        finally:
            self._stopping.set()
            self._shutdown()

    def stop(self) -> None:
        """Ask :meth:`serve_forever` to stop (safe from signal handlers and other threads)."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _shutdown(self) -> None:
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            if conn.transport is None or conn.transport.is_active():
                conn.close("server_stopping")
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for conn in connections:
            threads = [conn.transport, *conn.threads] if conn.transport else conn.threads
            for thread in threads:
                if thread is not threading.current_thread() and thread.is_alive():
                    thread.join(max(0.0, deadline - time.monotonic()))
        if self._reaper.is_alive():
            self._reaper.join(timeout=2 * TICK_SECONDS + 1)
        for conn in connections:
            self._finish(conn)
        for service in reversed(self._services):
            service.stop()
        self.gateway.audit.emit("server_stopped", connections_closed=len(connections))
        os.close(self._wake_r)
        os.close(self._wake_w)

    # -- accepting ---------------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        try:
            sock, address = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # e.g. EMFILE: keep serving, say why
            self.gateway.audit.emit("connection_refused", reason="accept_failed", error=str(exc))
            time.sleep(TICK_SECONDS)
            return
        sock.setblocking(True)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection(secrets.token_hex(8), str(address[0]), int(address[1]))
        refusal, evicted = self._admit_connection(conn)
        if evicted is not None:
            evicted.close("evicted_idle")
        if refusal is not None:
            self.gateway.audit.emit("connection_refused", **conn.fields(), reason=refusal)
            sock.close()
            return
        try:
            conn.transport = sftp_server.start_transport(
                sock, conn, self, on_pulled=self._on_pulled
            )
        except Exception as exc:
            self.gateway.audit.emit(
                "connection_refused", **conn.fields(), reason="transport_failed", error=str(exc)
            )
            sock.close()
            self._forget(conn)

    def _admit_connection(self, conn: Connection) -> tuple[str | None, Connection | None]:
        """Admit ``conn`` or say why not; also the idle connection it replaces, if any."""
        evicted = None
        with self._lock:
            if self._stopping.is_set():
                return "server_stopping", None
            if self._per_source.get(conn.ip, 0) >= self._cfg.max_connections_per_source:
                return "max_connections_per_source", None
            # Evicted connections are on their way out (no login step is running in them).
            pending = [c for c in self._connections if not c.logged_in and not c.evicted]
            if len(pending) >= self._cfg.max_unauthenticated:
                evicted = self._idle_victim(pending, conn.ip)
                if evicted is None:
                    return "max_unauthenticated", None
                evicted.evicted = True
            self._connections.add(conn)
            self._per_source[conn.ip] = self._per_source.get(conn.ip, 0) + 1
        return None, evicted

    @staticmethod
    def _idle_victim(pending: list[Connection], ip: str) -> Connection | None:
        """The idle waiting connection that may make room for one from ``ip`` (see above)."""
        now = time.monotonic()
        per_source = Counter(c.ip for c in pending)
        idle = [
            c
            for c in pending
            if c.close_reason is None
            and not c.busy
            and c.password_user is None
            and now - c.accepted_at >= EVICT_AFTER_SECONDS
        ]
        if not idle:
            return None
        victim = max(idle, key=lambda c: (per_source[c.ip], -c.accepted_at))
        return victim if per_source[victim.ip] >= per_source[ip] + 1 else None

    def _forget(self, conn: Connection) -> bool:
        with self._lock:
            if conn not in self._connections:
                return False
            self._connections.discard(conn)
            left = self._per_source.get(conn.ip, 1) - 1
            if left > 0:
                self._per_source[conn.ip] = left
            else:
                self._per_source.pop(conn.ip, None)
            if conn.logged_in and conn.account is not None:
                name = conn.account.name
                self._per_account[name] = max(0, self._per_account.get(name, 1) - 1)
        return True

    # -- logins ------------------------------------------------------------------------------

    def has_room(self, user: str) -> bool:
        """Whether ``user`` may have one more logged-in connection."""
        with self._lock:
            return self._per_account.get(user, 0) < self._cfg.max_sessions_per_account

    def confirm_login(self, conn: Connection) -> bool:
        """Recognise a completed login (see the module docstring); idempotent.

        Returns:
            True when ``conn`` is logged in; False when it is not (yet), or was
            refused and cut here.
        """
        # Audited under the connection's lock, so no thread can see the login (and open a
        # channel) before login_succeeded is in the log.
        with conn.lock:
            if conn.logged_in:
                return True
            transport = conn.transport
            if conn.close_reason is not None or transport is None:
                return False
            if not transport.is_authenticated():
                return False
            account = conn.account
            user = transport.get_username()
            if (
                account is None
                or user != conn.password_user
                or user != account.name
                or conn.key_fingerprint is None
            ):
                refusal: str | None = "login_inconsistent"
            else:
                with self._lock:
                    if self._per_account.get(user, 0) >= self._cfg.max_sessions_per_account:
                        refusal = "max_sessions_per_account"
                    else:
                        self._per_account[user] = self._per_account.get(user, 0) + 1
                        conn.logged_in = True
                        refusal = None
            audit = self.gateway.audit
            if refusal is None and account is not None:
                conn.touch()
                audit.emit(
                    "login_succeeded",
                    **conn.fields(),
                    method="publickey" if account.role == ROLE_FORWARDER else "password+publickey",
                    role=account.role,
                    key_fingerprint=conn.key_fingerprint,
                )
                return True
            audit.emit("connection_refused", **{**conn.fields(), "user": user, "reason": refusal})
        conn.close(refusal or "login_inconsistent")
        return False

    # -- the reaper --------------------------------------------------------------------------

    def _reap_loop(self) -> None:
        checked = time.monotonic()
        while not self._stopping.wait(TICK_SECONDS):
            with self._lock:
                connections = list(self._connections)
            if time.monotonic() - checked >= ACCOUNT_CHECK_SECONDS:
                checked = time.monotonic()
                self._cut_withdrawn_accounts(connections)
            for conn in connections:
                try:
                    self._reap(conn)
                except Exception as exc:  # never let one connection stop the reaper
                    conn.close("internal_error")
                    self._emit_quietly(
                        "connection_closed", conn, reason="internal_error", error=str(exc)
                    )

    def _cut_withdrawn_accounts(self, connections: Sequence[Connection]) -> None:
        """Close the sessions of accounts locked (``user lock``) or removed since they logged in.

        A lockout by failed logins does not count: otherwise anyone could cut a
        ward's running upload by guessing its password five times.
        """
        users = {c.account.name for c in connections if c.logged_in and c.account is not None}
        if not users:
            return
        try:
            current = {user: self.gateway.store.get_account(user) for user in users}
        except Exception:  # the state database is busy or failing: try again next time
            return
        for conn in connections:
            if not conn.logged_in or conn.account is None:
                continue
            account = current.get(conn.account.name)
            if account is None:
                conn.close("account_removed")
            elif account.admin_locked:
                conn.close("account_locked")

    def _reap(self, conn: Connection) -> None:
        transport = conn.transport
        if transport is None:
            return
        if not transport.is_active():
            if not any(t.is_alive() for t in (transport, *conn.threads)):
                self._finish(conn)  # after the SFTP threads have closed their files
            return
        sftp_server.note_negotiated(conn, self.gateway.audit)
        now = time.monotonic()
        if not conn.logged_in:
            if self.confirm_login(conn):
                return
            if now - conn.accepted_at > self._cfg.login_grace_seconds:
                conn.close("login_grace_timeout")
            elif conn.password_failures >= sftp_server.MAX_PASSWORD_FAILURES:
                conn.close("too_many_auth_failures")
        elif not conn.busy and now - conn.last_activity > self._cfg.idle_timeout_seconds:
            conn.close("idle_timeout")

    def _finish(self, conn: Connection) -> None:
        """Audit the end of a connection once and release its caps."""
        transport = conn.transport
        if transport is not None and transport.is_active():
            return
        if not self._forget(conn):
            return
        reason = conn.close_reason or "client_closed"
        fields: dict[str, object] = {
            "reason": reason,
            "duration_ms": int((time.monotonic() - conn.accepted_at) * 1000),
        }
        if not conn.negotiated:
            fields.update(sftp_server.negotiation_failure(conn))
        self._emit_quietly("connection_closed", conn, **fields)

    def _emit_quietly(self, event: str, conn: Connection, **fields: object) -> None:
        """Audit from the reaper; an audit failure must not kill the thread."""
        # An audit failure must not kill the reaper; the log reports it on the next emit.
        with contextlib.suppress(Exception):
            self.gateway.audit.emit(event, **{**conn.fields(), **fields})
