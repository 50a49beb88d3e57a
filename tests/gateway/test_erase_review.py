"""Regression tests of the custody review (issue 6) for ``erase``: real commands, one print site.

Most run ``lgwan-gateway`` as a subprocess (:mod:`tests.gateway.custody_kit`); the
few that must make something happen *during* an erasure (a copy appearing while
it wipes, a wipe that fails once) run the same ``main`` in this process.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import sqlite3
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from custody import (
    KIND_ERASURE_CERTIFICATE,
    check_erasure_body,
    load_private_key,
    loads_record,
    verify_record,
)
from gateway import cli, erase_cli
from gateway import config as config_mod
from gateway.erasure import ErasureError
from gateway.erasure import wipe as erasure_wipe
from gateway.pipeline import BatchState
from gateway.spool import Spool, SpoolBusyError
from gateway.state import BatchRecord, StateStore
from gateway.storage import Limits, Storage
from tests.conftest import Result
from tests.gateway.custody_kit import (
    BATCH,
    HANDLER,
    HANDLER_PASSWORD,
    MANAGER,
    MANAGER_PASSWORD,
    PLAINTEXT,
    TENANT,
    CustodySite,
    make_site,
)
from tests.gateway.test_envelope_check import sealed_envelope


@pytest.fixture
def site(tmp_path: Path) -> CustodySite:
    return make_site(tmp_path)


def _erase(site: CustodySite) -> Result:
    return site.gateway(
        "erase", BATCH, "--as", HANDLER, "--password-fd", "{handler}",
        "--approver", MANAGER, "--approver-password-fd", "{manager}",
    )  # fmt: skip


def _erase_here(site: CustodySite, capsys: pytest.CaptureFixture[str]) -> Result:
    """The same ``erase`` in this process (so a test can patch what happens during it)."""
    fds: list[int] = []
    for secret in (HANDLER_PASSWORD, MANAGER_PASSWORD):
        read_end, write_end = os.pipe()
        os.write(write_end, secret.encode() + b"\n")
        os.close(write_end)
        fds.append(read_end)
    try:
        code = cli.main(
            ["--config", str(site.config), "erase", BATCH, "--as", HANDLER,
             "--password-fd", str(fds[0]), "--approver", MANAGER,
             "--approver-password-fd", str(fds[1])]
        )  # fmt: skip
    finally:
        for fd in fds:
            os.close(fd)
    out, err = capsys.readouterr()
    return Result(code, out, err)


def _certificate(site: CustodySite) -> dict[str, object]:
    cfg = config_mod.load(str(site.config))
    key = load_private_key(cfg.path(cfg.keys.signing_key).read_bytes()).public_key()
    data = (site.root / "certificates" / f"{BATCH}.erasure.json").read_bytes()
    return verify_record(loads_record(data), key, kind=KIND_ERASURE_CERTIFICATE)


def _items(body: dict[str, object]) -> list[dict[str, object]]:
    items = body["items"]
    assert isinstance(items, list)
    return items


def _journal(site: CustodySite) -> list[tuple[object, ...]]:
    database = f"file:{site.root / 'state.db'}?mode=ro"
    with contextlib.closing(sqlite3.connect(database, uri=True)) as conn:
        rows: list[tuple[object, ...]] = conn.execute(
            "SELECT batch_id, finished_at, items FROM custody_erasures"
        ).fetchall()
    return rows


def _untouched(site: CustodySite, result: Result) -> None:
    """Refused before anything was erased: exit 1, envelope there, no journal, no certificate."""
    assert result.code == 1, result
    assert result.out == "" and "Traceback" not in result.err
    assert (site.spool / f"{BATCH}.age").exists()
    assert _journal(site) == []
    assert not (site.root / "certificates" / f"{BATCH}.erasure.json").exists()


@contextlib.contextmanager
def _holding(site: CustodySite, mode: int) -> Iterator[None]:
    """Hold the custody lock (the spool directory's flock) as another process would."""
    site.spool.mkdir(exist_ok=True)
    fd = os.open(site.spool, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


# -- C1: an interrupted open --------------------------------------------------------------------


def test_plaintext_left_by_a_killed_open_is_erased_and_certified(site: CustodySite) -> None:
    """C1: ``work/.opening-<batch>-XXXX/`` is found, listed as plaintext, and gone after erase."""
    site.spool_batch()
    left = site.work / f".opening-{BATCH}-q1w2e3r4" / "print.csv"
    left.parent.mkdir(parents=True)
    left.write_bytes(PLAINTEXT)
    done = _erase(site)
    assert done.code == 0, done.err
    assert not left.parent.exists()
    body = _certificate(site)
    plaintext = [i for i in _items(body) if i["kind"] == "plaintext"]
    assert [(i["path"], i["sha256"]) for i in plaintext] == [
        (str(left), hashlib.sha256(PLAINTEXT).hexdigest())
    ]
    assert body["opened"] is True
    check_erasure_body(body, signer=str(body["printsite_key"]))


def test_an_unattributable_opening_stops_the_erasure(site: CustodySite) -> None:
    """C1: a ``.opening-…`` left by an older open may be this batch's: nothing is erased."""
    site.spool_batch()
    stray = site.work / ".opening-abcd1234" / "print.csv"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(PLAINTEXT)
    done = _erase(site)
    _untouched(site, done)
    assert "interrupted opening of an unknown batch" in done.err
    assert stray.read_bytes() == PLAINTEXT


# -- H1: one custody lock ----------------------------------------------------------------------


def test_erase_waits_for_no_one_while_an_open_or_delivery_holds_the_lock(
    site: CustodySite,
) -> None:
    """H1: the lock held shared (an open, a delivery): erase exits 75, nothing erased."""
    site.spool_batch()
    with _holding(site, fcntl.LOCK_SH):
        done = _erase(site)
    assert done.code == 75, done
    assert (site.spool / f"{BATCH}.age").exists() and _journal(site) == []
    assert _erase(site).code == 0


def test_open_and_delivery_are_refused_while_erase_holds_the_lock(site: CustodySite) -> None:
    """H1: held exclusively (an erase): open exits 75; a delivery is busy."""
    site.spool_batch()
    envelope = sealed_envelope("20260716-JUMIN-AB12CD")
    with _holding(site, fcntl.LOCK_EX):
        done = site.open()
        with pytest.raises(SpoolBusyError):
            Spool(site.spool).deliver(
                "20260716-JUMIN-AB12CD", io.BytesIO(envelope), tenant=TENANT, channel="lgwan",
                expected_size=len(envelope), expected_sha256=hashlib.sha256(envelope).hexdigest(),
                source_detail={},
            )  # fmt: skip
    assert done.code == 75, done
    assert "an erase is running" in done.err
    assert [p.name for p in site.work.iterdir()] == []
    assert not (site.spool / "20260716-JUMIN-AB12CD.age").exists()


def test_a_copy_appearing_during_the_wipe_stops_the_certificate(
    site: CustodySite, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """H1: after wiping, erase looks again; a copy made meanwhile means no certificate."""
    envelope = site.spool_batch()
    real_wipe = erasure_wipe

    def wipe_then_a_download_lands(*args: object, **kwargs: object) -> None:
        real_wipe(*args, **kwargs)  # type: ignore[arg-type]
        (site.spool / ".pull").mkdir()  # e.g. ``pull`` (outside the lock) staging it again
        (site.spool / ".pull" / f"{BATCH}.age.part").write_bytes(envelope[:100])

    monkeypatch.setattr(erase_cli, "wipe", wipe_then_a_download_lands)
    done = _erase_here(site, capsys)
    assert done.code == 1, done
    assert "still exist after erasing" in done.err and f".pull/{BATCH}.age.part" in done.err
    assert not (site.root / "certificates" / f"{BATCH}.erasure.json").exists()
    [(_batch, finished, _items)] = _journal(site)
    assert finished is None


def test_no_opening_is_recorded_once_an_erasure_is(tmp_path: Path) -> None:
    """H1: ``add_open`` refuses a batch whose erasure is recorded (started or finished)."""
    from gateway.state import ErasureItem, ErasureRecord, OpenRecord
    from gateway.state_custody import BatchErasedError

    now = datetime.now().astimezone()
    with StateStore.open(tmp_path / "state.db", create=True) as store:
        item = ErasureItem("envelope", "/s/x.age", 1, "0" * 64)
        store.start_erasure(
            ErasureRecord(BATCH, TENANT, "dvd", "a", "b", now, None, (item,), None, "m")
        )
        opening = OpenRecord(BATCH, TENANT, "a", now, "hand", BATCH, None, "/w", ("x.csv",))
        with pytest.raises(BatchErasedError):
            store.add_open(opening)
        assert store.opens(BATCH) == []


# -- H2: the certificate may not say less than the custody log --------------------------------


def test_plaintext_of_a_recorded_opening_that_was_moved_away_stops_the_erasure(
    site: CustodySite,
) -> None:
    """H2: opened (recorded), then ``mv work/B ~/keep``: refused, audited, nothing erased."""
    site.spool_batch()
    assert site.open().code == 0
    kept = site.cwd / "keep"
    (site.work / BATCH).rename(kept)
    done = _erase(site)
    _untouched(site, done)
    assert "released file(s) are not in" in done.err and "'print.csv'" in done.err
    [refused] = site.audit("custody_refused")
    assert (refused["reason"], refused["action"], refused["batch"]) == (
        "plaintext_missing",
        "erase",
        BATCH,
    )
    assert (kept / "print.csv").read_bytes() == PLAINTEXT
    (kept).rename(site.work / BATCH)  # put back: now it erases, and says it was opened
    assert _erase(site).code == 0
    body = _certificate(site)
    assert body["opened"] is True
    assert [i["kind"] for i in _items(body)] == ["plaintext", "envelope"]


# -- M1, M2: refused before wiping -------------------------------------------------------------


def test_a_certificate_too_large_for_anyone_is_refused_before_wiping(site: CustodySite) -> None:
    """M1: the would-be certificate exceeds the shared 1 MiB: refused, nothing erased."""
    site.spool_batch()
    stray = site.work / BATCH
    stray.mkdir(parents=True)
    for number in range(2600):
        (stray / f"{number:05d}-{'x' * 240}").write_bytes(b"x")
    done = _erase(site)
    _untouched(site, done)
    assert "more than the 1048576 every side accepts" in done.err
    assert len(list(stray.iterdir())) == 2600


def _received(site: CustodySite, state: BatchState, envelope: bytes) -> None:
    """This site's ``serve`` holds the batch (``envelope``) in ``state``."""
    cfg = config_mod.load(str(site.config))
    now = datetime.now().astimezone()
    with StateStore.open(cfg.path(cfg.state.database), create=False) as store:
        store.insert_batch(
            BatchRecord(BATCH, TENANT, "ward1", f"{BATCH}.age", len(envelope),
                        hashlib.sha256(envelope).hexdigest(), state, now, now)
        )  # fmt: skip
    storage = Storage(cfg.path(cfg.storage.root), Limits(1 << 30, 1 << 30, 0))
    try:
        storage.ensure_tenant(TENANT)
    finally:
        storage.close()


@pytest.mark.parametrize("state", [BatchState.RECEIVED, BatchState.QUARANTINED])
def test_a_batch_that_never_reached_the_spool_is_not_erased(
    site: CustodySite, state: BatchState
) -> None:
    """M2: RECEIVED or QUARANTINED here: refused, its retained copy untouched, no journal."""
    envelope = sealed_envelope(BATCH)
    _received(site, state, envelope)
    inbox = site.root / "storage" / "tenants" / TENANT / "inbox" / f"{BATCH}.age"
    inbox.write_bytes(envelope)
    done = _erase(site)
    assert done.code == 1 and f"is {state.value} here" in done.err, done
    assert inbox.read_bytes() == envelope and _journal(site) == []


def test_a_batch_without_its_envelope_in_the_spool_is_not_erased(site: CustodySite) -> None:
    """M2: FORWARDED here, but only a retained copy (no ``envelope`` item): nothing erased."""
    envelope = sealed_envelope(BATCH)
    _received(site, BatchState.FORWARDED, envelope)
    outbox = site.root / "storage" / "tenants" / TENANT / "outbox" / f"{BATCH}.age"
    outbox.write_bytes(envelope)
    done = _erase(site)
    assert done.code == 1 and "holds no envelope" in done.err, done
    assert outbox.read_bytes() == envelope and _journal(site) == []


# -- M4, M5: the tombstone last; a refused publication is an incident ---------------------------


def test_a_refused_publication_is_an_incident_and_leaves_the_batch_erasing(
    site: CustodySite,
) -> None:
    """M5: publishing fails (another certificate is there): audited, incident raised once.

    M4: the spool's copy is written last, so ``batches`` and ``overdue`` say
    ``erasing`` until a later run completes it.
    """
    _received(site, BatchState.FORWARDED, site.spool_batch())
    receipts = site.root / "storage" / "tenants" / TENANT / "receipts"
    (receipts / f"{BATCH}.erasure.json").write_bytes(b"someone else's\n")
    done = _erase(site)
    assert done.code == 1 and "a different erasure certificate" in done.err, done
    [rejected] = site.audit("erasure_certificate_rejected")
    assert (rejected["via"], rejected["reason"], rejected["batch"]) == ("erase", "conflict", BATCH)
    assert [e["kind"] for e in site.audit("incident_raised")] == ["certificate_rejected"]
    assert not (site.spool / f"{BATCH}.erasure.json").exists()
    listed = site.gateway("batches")
    assert [json.loads(line)["state"] for line in listed.out.splitlines()] == ["erasing"]
    overdue = site.gateway("overdue", "--days", "0")
    assert overdue.code == 1 and " erasing " in overdue.out, overdue
    assert "run 'lgwan-gateway erase BATCH' again" in overdue.err

    (receipts / f"{BATCH}.erasure.json").unlink()  # the cause removed: the next run completes
    again = _erase(site)
    assert again.code == 0, again.err
    issued = (site.root / "certificates" / f"{BATCH}.erasure.json").read_bytes()
    assert (site.spool / f"{BATCH}.erasure.json").read_bytes() == issued
    assert (receipts / f"{BATCH}.erasure.json").read_bytes() == issued
    listed = site.gateway("batches")
    assert [json.loads(line)["state"] for line in listed.out.splitlines()] == ["erased"]


# -- L5: a resumed erasure keeps its method; who resumed it is audited ---------------------------


def test_a_resumed_erasure_keeps_the_journal_method_and_audits_who_resumed(
    site: CustodySite, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """L5: started with 3 passes, resumed after the config says 1: the certificate says 3."""
    site.spool_batch()
    text = site.config.read_text()
    site.config.write_text(text.replace("overwrite_passes = 1", "overwrite_passes = 3"))
    seen: list[int] = []

    def failing_wipe(*args: object, **kwargs: object) -> None:
        raise ErasureError("the disk went away")

    monkeypatch.setattr(erase_cli, "wipe", failing_wipe)
    assert _erase_here(site, capsys).code == 1
    monkeypatch.undo()
    site.config.write_text(text)  # overwrite_passes = 1 again
    real_wipe = erasure_wipe

    def counting_wipe(*args: object, passes: int, **kwargs: object) -> None:
        seen.append(passes)
        real_wipe(*args, passes=passes, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(erase_cli, "wipe", counting_wipe)
    done = _erase_here(site, capsys)
    assert done.code == 0, done.err
    assert seen == [3]
    assert _certificate(site)["method"] == "zero-overwrite-3-pass+unlink"
    first, second = site.audit("erasure_started")
    assert (first["resumed"], first["resumed_by"], first["method"]) == (
        False,
        None,
        "zero-overwrite-3-pass+unlink",
    )
    assert (second["resumed"], second["resumed_by"], second["journal_handler"]) == (
        True,
        HANDLER,
        HANDLER,
    )


def test_the_new_refusals_speak_japanese(site: CustodySite) -> None:
    """The busy and never-delivered refusals are translated (``--lang ja``)."""
    site.spool_batch()
    with _holding(site, fcntl.LOCK_SH):
        busy = site.gateway(
            "--lang", "ja", "erase", BATCH, "--as", HANDLER, "--password-fd", "{handler}",
            "--approver", MANAGER, "--approver-password-fd", "{manager}",
        )  # fmt: skip
    assert busy.code == 75 and "別の erase、open または配送が実行中です" in busy.err, busy
    with _holding(site, fcntl.LOCK_EX):
        opened = site.gateway(
            "--lang", "ja", "open", BATCH, "--as", HANDLER, "--password-fd", "{handler}",
            "--passphrase-fd", "{fd}", "--via", "hand",
        )  # fmt: skip
    assert opened.code == 75 and "erase が実行中です" in opened.err, opened
