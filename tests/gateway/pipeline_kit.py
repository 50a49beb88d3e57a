"""Helpers for the pipeline tests: envelopes good and bad, and an in-process gateway.

Envelopes are built without running scrypt: the envelope check never decrypts,
so a well-formed header with a random stanza body and a payload of a length an
age STREAM can have is indistinguishable from a sealed batch for the gateway.
"""

from __future__ import annotations

import dataclasses
import io
import os
import zipfile
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

from envelope.format import Stanza, b64encode, serialize_header
from gateway import admin, app
from gateway import config as config_mod
from gateway.config import GatewayConfig
from gateway.policy import Area
from gateway.routes import TenantSection
from gateway.state import BatchRecord

CHUNK = 64 * 1024
TAG = 16
T0 = datetime(2026, 7, 15, 1, 0, tzinfo=UTC)


def envelope(size: int = 4000, *, work_factor: int = 18, stanza: str = "scrypt") -> bytes:
    """A binary age v1 file with one stanza and ``size`` bytes of (random) plaintext length."""
    file_key = os.urandom(16)
    if stanza == "scrypt":
        salt = b64encode(os.urandom(16)).decode()
        stanzas = (Stanza("scrypt", (salt, str(work_factor)), os.urandom(32)),)
    else:
        share = b64encode(os.urandom(32)).decode()
        stanzas = (Stanza("X25519", (share,), os.urandom(32)),)
    chunks = max(1, -(-size // CHUNK))
    payload = os.urandom(size + TAG * chunks)
    return serialize_header(stanzas, file_key) + os.urandom(16) + payload


def _zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("data.csv", "a,b\n1,2\n")
    return out.getvalue()


def _truncated() -> bytes:
    """Two full chunks, cut 10 bytes into the second: the file ends inside a chunk's tag."""
    full = envelope(2 * CHUNK)
    return full[: len(full) - (CHUNK + TAG) + 10]


BAD_UPLOADS: Mapping[str, tuple[Callable[[], bytes], str]] = {
    "csv": (lambda: "被保険者番号,氏名\n0001,山田\n".encode("cp932"), "not_age"),
    "zip": (_zip, "not_age"),
    "pdf": (lambda: b"%PDF-1.7\n" + os.urandom(2000), "not_age"),
    "x25519": (lambda: envelope(stanza="X25519"), "not_scrypt"),
    "truncated": (_truncated, "truncated"),
    "low_work_factor": (lambda: envelope(work_factor=10), "work_factor_low"),
}
"""Uploads that must be quarantined: name → (content, quarantine reason)."""


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += timedelta(seconds=seconds)


def make_config(
    root: Path, tenants: Mapping[str, str | TenantSection], **forwarder: int
) -> GatewayConfig:
    """``init`` a gateway root; its config with these tenants (routes or tables) and [forwarder]."""
    admin.init_root(root, actor="test")
    cfg = config_mod.load(str(root / "gateway.toml"))
    sections = {
        name: value if isinstance(value, TenantSection) else TenantSection(forward=value)
        for name, value in tenants.items()
    }
    return dataclasses.replace(
        cfg, tenants=sections, forwarder=dataclasses.replace(cfg.forwarder, **forwarder)
    )


def build(cfg: GatewayConfig, clock: Callable[[], datetime] | None = None) -> app.Gateway:
    """The composition root, with an optional test clock."""
    return app.build(cfg) if clock is None else app.build(cfg, clock=clock)


def receive(gw: app.Gateway, tenant: str, batch_id: str, data: bytes) -> BatchRecord:
    """Upload ``data`` as the drop service does (write .part, complete) → RECEIVED."""
    gw.storage.ensure_tenant(tenant)
    upload = gw.storage.open_upload(
        tenant, f"{batch_id}.age.part", create=True, truncate=True, exclusive=False
    )
    try:
        upload.write(0, data)
    finally:
        upload.close()
    return gw.completer.complete(tenant, "ward-a", batch_id, {"tenant": tenant})


def inbox(gw: app.Gateway, tenant: str) -> list[str]:
    """Names in a tenant's inbox."""
    return [f.name for f in gw.storage.list_files(tenant, Area.INBOX)]


def states(gw: app.Gateway, batch_id: str) -> list[tuple[str, str | None]]:
    """The batch's recorded history: (state, reason) per event."""
    return [(e.state.value, e.reason) for e in gw.store.events(batch_id)]
