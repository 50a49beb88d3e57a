"""The soak's accounting (issue 8 §4): every batch sealed, found exactly once everywhere.

Split out of :mod:`tools.soak` (which runs the soak and calls these once both
servers have stopped): the state databases of both sites, the audit logs'
events, the spool's tombstones, the certificates at the print site, the
gateway and the ward; audit events a healthy soak never produces; ``audit
verify`` at both sites and ``ledger verify`` at every ward.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.state import StateStore

if TYPE_CHECKING:
    from tools.soak import Soak

PUSH, PULL = "soak-push", "soak-pull"
GW_CONFIG, PS_CONFIG = "gateway/gateway.toml", "print-site/gateway.toml"


def _events(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _once(events: list[dict[str, object]], event: str, batches: set[str]) -> list[str]:
    """Problems unless ``event`` is audited exactly once for each of ``batches``."""
    seen = Counter(str(e.get("batch")) for e in events if e["event"] == event)
    return [f"{event} x{seen[b]} for {b}" for b in sorted(batches) if seen[b] != 1]


def account(soak: Soak) -> list[str]:
    """Every batch sealed accounted for exactly once, everywhere; the problems found."""
    root, problems = soak.root, []
    sealed = set(soak.sealed)
    push = {b for b, w in soak.sealed.items() if w.tenant == PUSH}
    pull = sealed - push
    gw_store = StateStore.open(root / "gateway" / "state.db", create=False)
    ps_store = StateStore.open(root / "print-site" / "state.db", create=False)
    try:
        batches = {b.batch_id: b for b in gw_store.list_batches()}
        if set(batches) != sealed:
            problems.append(f"gateway batches differ from sealed: {set(batches) ^ sealed}")
        for batch_id, record in batches.items():
            ward = soak.sealed.get(batch_id)
            if record.state.value != "erased" or ward is None or record.tenant != ward.tenant:
                problems.append(f"gateway: {batch_id} is {record.state.value} ({record.tenant})")
        received = {b.batch_id: b for b in ps_store.list_batches()}
        if set(received) != push:
            problems.append(f"print site's serve received {set(received) ^ push} unexpectedly")
        problems += [f"print site: {b} is {r.state.value}" for b, r in received.items()
                     if r.state.value != "erased"]  # fmt: skip
        opened = Counter(o.batch_id for o in ps_store.opens())
        erased = Counter(e.batch_id for e in ps_store.erasures() if e.finished_at is not None)
        for batch_id in sorted(sealed):
            if opened[batch_id] != 1 or erased[batch_id] != 1:
                problems.append(f"{batch_id}: opened {opened[batch_id]}, erased {erased[batch_id]}")
    finally:
        gw_store.close()
        ps_store.close()
    gw_events = _events(root / "gateway" / "audit" / "audit.jsonl")
    ps_events = _events(root / "print-site" / "audit" / "audit.jsonl")
    for event, which in (
        ("upload_completed", sealed),
        ("batch_forwarded", push),
        ("batch_published", pull),
        ("batch_pulled", pull),
        ("erasure_certificate_received", sealed),
    ):
        problems += [f"gateway: {p}" for p in _once(gw_events, event, which)]
    for event, which in (
        ("upload_completed", push),
        ("batch_opened", sealed),
        ("erasure_completed", sealed),
    ):
        problems += [f"print site: {p}" for p in _once(ps_events, event, which)]
    problems += _files(soak, sealed)
    return problems


ANOMALIES = ("forwarder_failed", "incident_raised", "upload_rejected", "custody_refused",
             "erasure_certificate_rejected")  # fmt: skip
"""Audit events a healthy soak never produces (each one is a problem)."""
RETRIED = ("delivery_failed", "status_failed")
"""Audit events of failures that were retried (reported as figures)."""


def anomalies(soak: Soak) -> list[str]:
    """Problems for :data:`ANOMALIES` at either site; print the :data:`RETRIED` counts."""
    problems = []
    for site in ("gateway", "print-site"):
        seen = Counter(str(e["event"]) for e in _events(soak.root / site / "audit" / "audit.jsonl"))
        print(f"soak: {site}: " + ", ".join(f"{name} {seen[name]}" for name in RETRIED))
        problems += [f"{site}: {name} x{seen[name]}" for name in ANOMALIES if seen[name]]
    return problems


def _files(soak: Soak, sealed: set[str]) -> list[str]:
    """The spool holds tombstones only; certificates identical at the print site, gateway, ward."""
    root, problems = soak.root, []
    spool = sorted(p.name for p in soak.spool.iterdir() if p.name != ".pull")
    expected = sorted(f"{b}{s}" for b in sealed for s in (".arrival.json", ".erasure.json"))
    if spool != expected:
        problems.append(f"spool: {sorted(set(spool) ^ set(expected))[:5]} unexpected or missing")
    staging = soak.spool / ".pull"
    if staging.exists() and any(staging.iterdir()):
        problems.append("spool: staged pull downloads left behind")
    work = root / "print-site" / "work"
    if work.exists() and any(p for p in work.iterdir()):
        problems.append(f"work directory not empty: {sorted(p.name for p in work.iterdir())[:5]}")
    for batch_id, ward in soak.sealed.items():
        name = f"{batch_id}.erasure.json"
        copies = [
            root / "print-site" / "certificates" / name,
            soak.spool / name,
            soak.gateway_area(ward.tenant, "receipts") / name,
            root / ward.name / "certificates" / name,
        ]
        missing = [str(p.relative_to(root)) for p in copies if not p.is_file()]
        if missing:
            problems.append(f"{batch_id}: certificate missing at {missing}")
        elif len({p.read_bytes() for p in copies}) != 1:
            problems.append(f"{batch_id}: the certificate copies differ")
    for tenant in (PUSH, PULL):
        inbox = soak.gateway_area(tenant, "inbox")
        if inbox.exists() and any(inbox.iterdir()):
            problems.append(f"gateway {tenant}/inbox not empty")
        outbox = soak.gateway_area(tenant, "outbox")
        left = [p.name for p in outbox.iterdir() if not p.name.endswith(".erasure.json")]
        if outbox.exists() and left:
            problems.append(f"gateway {tenant}/outbox holds {left[:5]}")
    if any((root / "gateway" / "storage" / "quarantine").iterdir()):
        problems.append("gateway quarantine not empty")
    return problems


def verify_logs(soak: Soak) -> list[str]:
    """``audit verify`` at both sites and ``ledger verify`` at every ward (exit 0 each)."""
    problems = []
    checks = [(f"{site}: audit verify", ["lgwan-gateway", "--config", c, "audit", "verify"])
              for site, c in (("gateway", GW_CONFIG), ("print site", PS_CONFIG))]  # fmt: skip
    checks += [(f"{w.name}: ledger verify", [*w.client, "ledger", "verify"]) for w in soak.wards]
    for title, args in checks:
        try:
            soak.s.run(title, args)
        except SystemExit as exc:
            problems.append(f"{title}: {exc}")
    return problems
