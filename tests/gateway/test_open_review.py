"""Regression tests of the custody review (issue 6) for ``open``: what it leaves, what it audits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from envelope import passphrase
from gateway import opener
from gateway.erasure import Places, find_copies
from gateway.opener import OpenError, open_batch
from tests.gateway.custody_kit import BATCH, PLAINTEXT, CustodySite, make_site
from tests.gateway.test_envelope_check import SECRET, sealed_envelope


@pytest.fixture
def site(tmp_path: Path) -> CustodySite:
    return make_site(tmp_path)


def _envelope(tmp_path: Path) -> Path:
    path = tmp_path / f"{BATCH}.age"
    path.write_bytes(sealed_envelope(BATCH))
    return path


def test_an_open_killed_before_its_rename_leaves_plaintext_erase_attributes(
    tmp_path: Path,
) -> None:
    """C1: killed after extracting, before the rename (SIGKILL: no cleanup runs), the
    plaintext lies in ``.opening-<batch>-XXXX/`` and ``erase`` finds it as the batch's."""
    envelope, work = _envelope(tmp_path), tmp_path / "work"
    child = os.fork()
    if child == 0:  # pragma: no cover - the child dies the way a killed open does
        try:
            opener._verify = lambda *args: os._exit(0)
            open_batch(envelope, work, SECRET, max_work_factor=20, csv_encoding="cp932")
        finally:
            os._exit(3)
    _pid, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    [left] = list(work.iterdir())
    assert left.name.startswith(f".opening-{BATCH}-")
    assert (left / "print.csv").read_bytes() == PLAINTEXT
    places = Places(tmp_path / "spool", work, tmp_path / "storage")
    assert [(c.kind, c.path) for c in find_copies(BATCH, "shinjuku", places)] == [
        ("plaintext", left / "print.csv")
    ]


def test_no_directory_is_made_before_the_manifest_is_admitted(tmp_path: Path) -> None:
    """C1: the temporary directory is named after the batch, so it exists only once it is known."""
    seen: list[list[str]] = []

    def admit(manifest: object) -> None:
        seen.append(sorted(p.name for p in (tmp_path / "work").iterdir()))

    open_batch(_envelope(tmp_path), tmp_path / "work", SECRET, max_work_factor=20,
               csv_encoding="cp932", admit=admit)  # fmt: skip
    assert seen == [[]]


def test_plaintext_abandoned_on_a_failure_is_overwritten_before_removal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """L6: a verification failure after extraction zeroes the released bytes, then removes them."""
    witnesses: list[int] = []

    def failing_verify(temp: Path, *args: object) -> None:
        witnesses.append(os.open(temp / "print.csv", os.O_RDONLY))
        raise OpenError("print.csv: content differs from the manifest (SHA-256)")

    monkeypatch.setattr(opener, "_verify", failing_verify)
    with pytest.raises(OpenError):
        open_batch(_envelope(tmp_path), tmp_path / "work", SECRET, max_work_factor=20,
                   csv_encoding="cp932", wipe_passes=2)  # fmt: skip
    [fd] = witnesses
    try:
        assert os.pread(fd, 1 << 16, 0) == bytes(len(PLAINTEXT))
    finally:
        os.close(fd)
    assert list((tmp_path / "work").iterdir()) == []


def test_reopening_while_the_earlier_copy_is_there_is_an_audited_refusal(
    site: CustodySite,
) -> None:
    """L6: with --reason but the earlier copy present: refused and audited custody_refused."""
    site.spool_batch()
    assert site.open().code == 0
    again = site.open(BATCH, "--reason", "paper jam")
    assert again.code == 1 and "already exists" in again.err, again
    [refused] = site.audit("custody_refused")
    assert (refused["reason"], refused["action"], refused["batch"]) == (
        "earlier_copy_present",
        "open",
        BATCH,
    )
    assert (site.work / BATCH / "print.csv").read_bytes() == PLAINTEXT


def test_a_wrong_passphrase_leaves_no_opening_directory(site: CustodySite) -> None:
    """Nothing is decrypted, so nothing named after the batch is made."""
    site.spool_batch()
    done = site.open(BATCH, fd=passphrase.generate())
    assert done.code == 1
    assert list(site.work.iterdir()) == []
