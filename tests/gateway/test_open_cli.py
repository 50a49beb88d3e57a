"""``lgwan-gateway open`` under custody, as a subprocess: who, how, where, never twice silently."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

from gateway.state import OpenRecord, StateStore
from tests.conftest import Result
from tests.gateway.custody_kit import (
    BATCH,
    HANDLER,
    HANDLER_PASSWORD,
    MANAGER,
    OTHER,
    PASSPHRASE,
    PLAINTEXT,
    TENANT,
    CustodySite,
    make_site,
)
from tests.gateway.test_envelope_check import sealed_envelope


@pytest.fixture
def site(tmp_path: Path) -> CustodySite:
    return make_site(tmp_path)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _opens(site: CustodySite) -> list[OpenRecord]:
    with StateStore.open(site.root / "state.db", create=False) as store:
        return list(store.opens())


def _refused(site: CustodySite, done: Result, reason: str, words: str) -> None:
    """Exit 1 with ``words``, audited custody_refused ``reason``, nothing released or recorded."""
    assert done.code == 1, done
    assert words in done.err, done
    assert done.out == "" and "Traceback" not in done.err
    refused = site.audit("custody_refused")
    assert refused and refused[-1]["reason"] == reason and refused[-1]["action"] == "open"
    assert refused[-1]["os_user"]


# -- success --------------------------------------------------------------------------------


def test_open_by_batch_id_releases_into_the_work_dir_and_records_it(site: CustodySite) -> None:
    """A spool batch opens into work/<batch> (0700, files 0600), recorded and audited."""
    site.spool_batch()
    done = site.open()
    assert done.code == 0, done.err
    target = site.work / BATCH
    assert done.out == f"{target}\n"
    assert (target / "print.csv").read_bytes() == PLAINTEXT
    assert _mode(site.work) == 0o700 and _mode(target) == 0o700
    assert _mode(target / "print.csv") == 0o600
    [record] = _opens(site)
    assert record.batch_id == BATCH and record.tenant == TENANT
    assert record.handler == HANDLER and record.via == "hand"
    assert record.notice_serial == BATCH and record.reason is None
    assert record.files == ("print.csv",) and record.directory == str(target)
    [event] = site.audit("batch_opened")
    assert event["batch"] == BATCH and event["tenant"] == TENANT and event["actor"] == HANDLER
    assert event["via"] == "hand" and event["notice_serial"] == BATCH
    assert event["occurrence"] == 1 and event["reason"] is None
    assert event["directory"] == str(target) and event["files"] == ["print.csv"]
    log = (site.root / "audit" / "audit.jsonl").read_text()
    assert PASSPHRASE not in log and HANDLER_PASSWORD not in log
    assert PASSPHRASE not in done.err and HANDLER_PASSWORD not in done.err


def test_via_and_notice_serial_are_recorded(site: CustodySite) -> None:
    """--via registered-mail and --notice-serial (a tracking number) go into the custody log."""
    site.spool_batch()
    done = site.gateway(
        "open", BATCH, "--as", MANAGER, "--password-fd", "{manager}", "--passphrase-fd", "{fd}",
        "--via", "registered-mail", "--notice-serial", "1234-5678-9012",
    )  # fmt: skip
    assert done.code == 0, done.err
    [record] = _opens(site)
    assert record.via == "registered-mail" and record.handler == MANAGER
    assert record.notice_serial == "1234-5678-9012"
    [event] = site.audit("batch_opened")
    assert event["notice_serial"] == "1234-5678-9012" and event["via"] == "registered-mail"


def test_open_by_path_outside_the_spool(site: CustodySite) -> None:
    """An envelope given by path opens into the work directory; no spool entry, no tenant."""
    (site.cwd / "copy.age").write_bytes(sealed_envelope(OTHER))
    done = site.open("copy.age")
    assert done.code == 0, done.err
    assert (site.work / OTHER / "print.csv").read_bytes() == PLAINTEXT
    [record] = _opens(site)
    assert record.batch_id == OTHER and record.tenant == ""


def test_out_naming_the_work_dir_itself_is_allowed(site: CustodySite) -> None:
    """--out may name the work directory again (here relative to the working directory)."""
    site.spool_batch()
    done = site.open(BATCH, "--out", "site/work/.")
    assert done.code == 0, done.err
    assert (site.work / BATCH / "print.csv").read_bytes() == PLAINTEXT


def test_a_loose_work_dir_is_made_private(site: CustodySite) -> None:
    """A work directory others can read is tightened to 0700 before plaintext goes in."""
    site.spool_batch()
    site.work.chmod(0o755)
    assert site.open().code == 0
    assert _mode(site.work) == 0o700


def test_missing_work_dir_is_created_private(site: CustodySite) -> None:
    """A work directory that does not exist yet is created 0700."""
    site.spool_batch()
    site.work.rmdir()
    assert site.open().code == 0
    assert _mode(site.work) == 0o700 and (site.work / BATCH).is_dir()


# -- where plaintext may go -----------------------------------------------------------------


@pytest.mark.parametrize(
    "where", ["elsewhere", "site/work/../spool", "link", "/tmp", "site/work/inside"]
)
def test_out_other_than_the_work_dir_is_refused(site: CustodySite, where: str) -> None:
    """--out anywhere but [printsite] work_dir (also via .. or a symlink, also a directory
    inside it, where erase would not look) exits 2; nothing is released."""
    site.spool_batch()
    (site.work / "link").symlink_to(site.cwd)
    out = site.work / "link" if where == "link" else where
    done = site.open(BATCH, "--out", out)
    assert done.code == 2, done.err
    assert "is not the work directory" in done.err and done.out == ""
    assert not (site.work / "inside").exists()
    assert not (site.cwd / "elsewhere").exists()
    assert not (site.cwd / BATCH).exists() and not (site.spool / BATCH).exists()
    assert site.audit("batch_opened") == [] and _opens(site) == []


# -- who may open ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "password", "reason"),
    [
        ("nobody", HANDLER_PASSWORD, "unknown_staff"),
        (HANDLER, "not-the-password-1", "bad_password"),
    ],
)
def test_unauthenticated_staff_cannot_open(
    site: CustodySite, name: str, password: str, reason: str
) -> None:
    """An unknown name or a wrong password is refused (exit 1, audited); nothing is released."""
    site.spool_batch()
    done = site.gateway(
        "open", BATCH, "--as", name, "--password-fd", "{pw}", "--passphrase-fd", "{fd}",
        "--via", "hand", pw=password,
    )  # fmt: skip
    _refused(site, done, reason, "wrong staff name or password")
    assert site.audit("custody_refused")[-1]["batch"] == BATCH
    assert not (site.work / BATCH).exists() and _opens(site) == []


def test_disabled_staff_cannot_open(site: CustodySite) -> None:
    """A disabled handler is refused (audited ``disabled``)."""
    site.spool_batch()
    assert site.gateway("staff", "disable", HANDLER).code == 0
    _refused(site, site.open(), "disabled", "disabled")
    assert not (site.work / BATCH).exists()


def test_actor_and_via_are_required(site: CustodySite) -> None:
    """Without --as or --via, open is a usage error (exit 2)."""
    site.spool_batch()
    no_as = site.gateway("open", BATCH, "--passphrase-fd", "{fd}", "--via", "hand")
    assert no_as.code == 2 and "--as" in no_as.err
    no_via = site.gateway("open", BATCH, "--as", HANDLER, "--password-fd", "{handler}")
    assert no_via.code == 2 and "--via" in no_via.err
    bad_via = site.open(BATCH, "--via", "fax")
    assert bad_via.code == 2


# -- opening again --------------------------------------------------------------------------


def test_reopening_needs_a_reason_and_the_earlier_copy_gone(site: CustodySite) -> None:
    """Opened once: again without --reason is refused (audited); with one while the copy is
    there 'already exists'; once the copy is moved away it opens, recorded with its reason."""
    site.spool_batch()
    assert site.open().code == 0
    _refused(site, site.open(), "reopen_without_reason", "needs a reason")
    again = site.open(BATCH, "--reason", "paper jam ruined the run")
    assert again.code == 1 and "already exists" in again.err
    assert (site.work / BATCH / "print.csv").read_bytes() == PLAINTEXT
    shutil.move(site.work / BATCH, site.cwd / "moved")
    done = site.open(BATCH, "--reason", "paper jam ruined the run")
    assert done.code == 0, done.err
    first, second = _opens(site)
    assert first.reason is None and second.reason == "paper jam ruined the run"
    events = site.audit("batch_opened")
    assert [e["occurrence"] for e in events] == [1, 2]
    assert events[1]["reason"] == "paper jam ruined the run"


def test_an_existing_directory_counts_as_opened(site: CustodySite) -> None:
    """work/<batch> already there (no record): refused without a reason, and kept with one."""
    site.spool_batch()
    (site.work / BATCH).mkdir()
    (site.work / BATCH / "keep.txt").write_text("earlier copy")
    _refused(site, site.open(), "reopen_without_reason", "already open")
    done = site.open(BATCH, "--reason", "again")
    assert done.code == 1 and "already exists" in done.err
    assert [p.name for p in (site.work / BATCH).iterdir()] == ["keep.txt"]
    assert _opens(site) == []


def test_reopen_finds_the_earlier_copy_after_the_work_dir_moved(site: CustodySite) -> None:
    """Opened, then [printsite] work_dir changed: opening again with a reason is refused while
    the recorded earlier directory still exists."""
    site.spool_batch()
    assert site.open().code == 0
    text = site.config.read_text()
    assert 'work_dir = "work"' in text
    site.config.write_text(text.replace('work_dir = "work"', 'work_dir = "work2"'))
    done = site.open(BATCH, "--reason", "second printer")
    assert done.code == 1 and "already exists" in done.err
    assert str(site.work / BATCH) in done.err
    assert not (site.root / "work2" / BATCH).exists()


def test_blank_reason_is_a_usage_error(site: CustodySite) -> None:
    """--reason '  ' is not a reason (exit 2)."""
    site.spool_batch()
    done = site.open(BATCH, "--reason", "  ")
    assert done.code == 2 and "--reason" in done.err


# -- erased and unknown batches -------------------------------------------------------------


def test_an_erased_batch_is_never_opened(site: CustodySite) -> None:
    """After erasure (certificate copy in the spool) open by id is refused, audited ``erased``."""
    site.spool_batch()
    site.mark_erased()
    _refused(site, site.open(), "erased", "has been erased")
    assert not (site.work / BATCH).exists()


def test_an_erased_batch_is_refused_from_a_renamed_copy(site: CustodySite) -> None:
    """A copy of an erased batch's envelope under another name is refused on its manifest,
    before any file is written."""
    envelope = site.spool_batch()
    site.mark_erased()
    (site.cwd / "found-on-a-share.age").write_bytes(envelope)
    _refused(site, site.open("found-on-a-share.age"), "erased", "has been erased")
    assert list(site.work.iterdir()) == []


def test_a_batch_not_in_the_spool_is_refused(site: CustodySite) -> None:
    """A batch id the spool does not hold exits 1 naming the spool."""
    done = site.open(BATCH)
    assert done.code == 1 and "not in the spool" in done.err


def test_wrong_passphrase_releases_nothing_and_records_nothing(site: CustodySite) -> None:
    """An authenticated handler with the wrong passphrase: exit 1, no directory, no record."""
    from envelope import passphrase

    site.spool_batch()
    done = site.open(BATCH, fd=passphrase.generate())
    assert done.code == 1 and "passphrase does not open" in done.err
    assert list(site.work.iterdir()) == [] and _opens(site) == []
    assert site.audit("batch_opened") == []
