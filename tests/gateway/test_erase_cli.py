"""``lgwan-gateway erase`` run as a subprocess: every copy gone, then a verifiable certificate."""

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pypdf import PdfReader

from custody import (
    KIND_ERASURE_CERTIFICATE,
    fingerprint,
    load_private_key,
    loads_record,
    verify_record,
)
from gateway import config as config_mod
from gateway.opener import open_batch
from gateway.pipeline import BatchState
from gateway.spool import Spool
from gateway.staff import Roster
from gateway.state import BatchRecord, StateStore
from gateway.storage import Limits, Storage
from tests.conftest import BIN, CliRunner, Result, run_cli
from tests.gateway.test_envelope_check import SECRET, sealed_envelope

BATCH = "20260715-KAIGO-7F3KQ2"
UNKNOWN = "20260716-JUMIN-AB12CD"
TENANT = "shinjuku"
PASSWORDS = {
    "yamada": "handler-pass-0001",
    "suzuki": "manager-pass-0002",
    "tanaka": "manager-pass-0003",
    "sato": "handler-pass-0004",
}
ENVELOPE = sealed_envelope(BATCH, padding=150_000)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Site:
    """A print site made by ``init --root``, with staff, one batch spooled and opened."""

    root: Path
    config: Path

    @property
    def cfg(self) -> config_mod.GatewayConfig:
        return config_mod.load(str(self.config))

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def certificate(self) -> Path:
        return self.root / "certificates" / f"{BATCH}.erasure.json"

    def argv(self, batch: str, handler: str, approver: str) -> list[str]:
        return [
            str(BIN / "lgwan-gateway"), "--config", str(self.config), "erase", batch,
            "--as", handler, "--password-fd", "{0}",
            "--approver", approver, "--approver-password-fd", "{1}",
        ]  # fmt: skip

    def erase(
        self,
        batch: str = BATCH,
        handler: str = "yamada",
        approver: str = "suzuki",
        passwords: Sequence[str] | None = None,
    ) -> Result:
        typed = passwords or (PASSWORDS.get(handler, "x" * 12), PASSWORDS.get(approver, "y" * 12))
        with _secret_fds(typed) as fds:
            done = subprocess.run(
                [a.format(*fds) for a in self.argv(batch, handler, approver)],
                cwd=self.root,
                capture_output=True,
                pass_fds=fds,
                env=_env(),
                stdin=subprocess.DEVNULL,
                timeout=300,
                check=False,
            )
        return Result(done.returncode, done.stdout.decode(), done.stderr.decode())

    def audit(self, event: str) -> list[dict[str, object]]:
        lines = (self.root / "audit" / "audit.jsonl").read_text().splitlines()
        return [doc for doc in map(json.loads, lines) if doc["event"] == event]

    def journal(self) -> list[tuple[object, ...]]:
        database = f"file:{self.root / 'state.db'}?mode=ro"
        with contextlib.closing(sqlite3.connect(database, uri=True)) as conn:
            rows: list[tuple[object, ...]] = conn.execute(
                "SELECT batch_id, finished_at, certificate FROM custody_erasures"
            ).fetchall()
        return rows

    def set_custody(self, **values: object) -> None:
        text = self.config.read_text()
        for key, value in values.items():
            rendered = str(value).lower() if isinstance(value, bool) else str(value)
            start = text.index(f"\n{key} = ", text.index("[custody]"))
            end = text.index("\n", start + 1)
            text = text[:start] + f"\n{key} = {rendered}" + text[end:]
        self.config.write_text(text)

    def public_key(self) -> Ed25519PublicKey:
        cfg = self.cfg
        return load_private_key(cfg.path(cfg.keys.signing_key).read_bytes()).public_key()


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LGWAN_")}


class _secret_fds:  # noqa: N801 -- used like a function
    """Pipes each holding one secret line; their read ends, closed on exit."""

    def __init__(self, secrets: Sequence[str]) -> None:
        self.fds: list[int] = []
        for secret in secrets:
            read_end, write_end = os.pipe()
            os.write(write_end, secret.encode() + b"\n")
            os.close(write_end)
            self.fds.append(read_end)

    def __enter__(self) -> tuple[int, ...]:
        return tuple(self.fds)

    def __exit__(self, *exc: object) -> None:
        for fd in self.fds:
            os.close(fd)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root made by ``init --root`` with four staff (made once: argon2 is slow on purpose)."""
    root = tmp_path_factory.mktemp("template") / "site"
    done = run_cli("lgwan-gateway", "init", "--root", root, cwd=root.parent)
    assert done.code == 0, done.err
    cfg = config_mod.load(str(root / "gateway.toml"))
    store = StateStore.open(cfg.path(cfg.state.database), create=False)
    try:
        roster = Roster(store, None, os_user="test")
        roster.add("yamada", "handler", "山田 太郎", PASSWORDS["yamada"])
        roster.add("suzuki", "manager", "鈴木 花子", PASSWORDS["suzuki"])
        roster.add("tanaka", "manager", "田中 一郎", PASSWORDS["tanaka"])
        roster.add("sato", "handler", "佐藤 次郎", PASSWORDS["sato"])
    finally:
        store.close()
    return root


def make_site(
    tmp_path: Path, template: Path, *, envelope: bytes = ENVELOPE, channel: str = "dvd"
) -> Site:
    """A copy of the template root with ``envelope`` spooled and opened into the work directory."""
    root = tmp_path / "site"
    shutil.copytree(template, root, symlinks=True)
    site = Site(root, root / "gateway.toml")
    Spool(site.spool).deliver(
        BATCH,
        io.BytesIO(envelope),
        tenant=TENANT,
        channel=channel,
        expected_size=len(envelope),
        expected_sha256=_sha(envelope),
        source_detail={},
    )
    open_batch(site.spool / f"{BATCH}.age", site.work, SECRET, max_work_factor=20,
               csv_encoding="cp932")  # fmt: skip
    return site


@pytest.fixture
def site(tmp_path: Path, template: Path) -> Site:
    """A print site with one opened DVD batch."""
    return make_site(tmp_path, template)


def _plaintext(site: Site) -> dict[str, tuple[int, str]]:
    """Each released file's path → (size, SHA-256), as ``open`` left them."""
    return {
        str(p): (p.stat().st_size, _sha(p.read_bytes()))
        for p in sorted((site.work / BATCH).iterdir())
    }


def _listed(site: Site) -> dict[str, tuple[int, str]]:
    """The certificate's items: path → (size, SHA-256)."""
    items = _certificate_body(site)["items"]
    assert isinstance(items, list)
    return {i["path"]: (i["size"], i["sha256"]) for i in items}


def _certificate_body(site: Site) -> dict[str, object]:
    doc = loads_record(site.certificate.read_bytes())
    return verify_record(doc, site.public_key(), kind=KIND_ERASURE_CERTIFICATE)


def _refused(site: Site, result: Result, reason: str) -> None:
    assert result.code == 1, result.err
    assert result.out == "" and "Traceback" not in result.err
    assert (site.spool / f"{BATCH}.age").exists() and (site.work / BATCH).is_dir()
    assert site.journal() == [] and not site.certificate.exists()
    assert [e["reason"] for e in site.audit("custody_refused")] == [reason]
    assert site.audit("erasure_started") == []


# -- the whole erasure ------------------------------------------------------------------------


def test_erase_removes_every_copy_and_certifies_the_hashes_taken_before(
    site: Site, tmp_path: Path
) -> None:
    """Envelope, plaintext and staging copies go; the signed certificate lists each hash."""
    plaintext = _plaintext(site)
    staged = site.spool / ".pull" / f"{BATCH}.age.part"
    staged.parent.mkdir()
    staged.write_bytes(ENVELOPE[:1000])
    outside = tmp_path / "outside.txt"
    outside.write_text("not the batch's")
    (site.work / BATCH / "link").symlink_to(outside)
    refused = site.erase()  # a link where plaintext could be: a person must look first
    assert refused.code == 1 and "link is a symbolic link" in refused.err
    assert site.journal() == [] and (site.spool / f"{BATCH}.age").exists()
    (site.work / BATCH / "link").unlink()

    result = site.erase()

    assert result.code == 0, result.err
    pdf = site.certificate.with_name(f"{BATCH}.erasure.pdf")
    assert result.out == f"{site.certificate}\n{pdf}\n"
    body = _certificate_body(site)
    assert set(body) == {
        "batch_id", "tenant", "channel", "items", "method", "started_at", "finished_at",
        "handler", "approver", "opened", "printsite_key",
    }  # fmt: skip
    assert (body["batch_id"], body["tenant"], body["channel"]) == (BATCH, TENANT, "dvd")
    assert (body["handler"], body["approver"], body["opened"]) == ("yamada", "suzuki", True)
    assert body["method"] == "zero-overwrite-1-pass+unlink"
    assert body["printsite_key"] == fingerprint(site.public_key())
    started = datetime.fromisoformat(str(body["started_at"]))
    assert started.utcoffset() is not None
    assert started <= datetime.fromisoformat(str(body["finished_at"]))
    listed = body["items"]
    assert isinstance(listed, list)
    items = {(i["kind"], i["path"]): (i["size"], i["sha256"]) for i in listed}
    envelope = str(site.spool / f"{BATCH}.age")
    expected = {("plaintext", path): measured for path, measured in plaintext.items()}
    expected[("envelope", envelope)] = (len(ENVELOPE), _sha(ENVELOPE))
    expected[("staging", str(staged))] = (1000, _sha(ENVELOPE[:1000]))
    assert items == expected
    for _kind, path in items:
        assert not os.path.lexists(path), path
    assert not os.path.lexists(site.work / BATCH)
    assert outside.read_text() == "not the batch's"
    assert sorted(p.name for p in site.spool.iterdir()) == [
        ".pull",
        f"{BATCH}.arrival.json",
        f"{BATCH}.erasure.json",
    ]
    assert (site.spool / f"{BATCH}.erasure.json").read_bytes() == site.certificate.read_bytes()
    assert site.certificate.stat().st_mode & 0o777 == 0o644
    [(batch, finished, certificate)] = site.journal()
    assert (batch, certificate) == (BATCH, str(site.certificate)) and finished
    [started_event] = site.audit("erasure_started")
    assert started_event["actor"] == "yamada" and started_event["approver"] == "suzuki"
    assert started_event["items"] == len(items) and started_event["resumed"] is False
    [completed] = site.audit("erasure_completed")
    assert completed["certificate"] == str(site.certificate) and completed["tenant"] == TENANT
    text = "\n".join(page.extract_text() for page in PdfReader(pdf).pages)
    for words in ("データ消去証明書", "Erasure certificate", BATCH, "山田", "鈴木",
                  "SSD", _sha(ENVELOPE)):  # fmt: skip
        assert words in text, words


def test_batches_shows_the_erased_batch(site: Site, gateway: CliRunner) -> None:
    """After erasure ``batches`` still lists the batch, in state erased."""
    assert site.erase().code == 0
    listed = gateway("--config", site.config, "batches")
    assert listed.code == 0, listed.err
    [row] = [json.loads(line) for line in listed.out.splitlines()]
    assert (row["batch_id"], row["state"]) == (BATCH, "erased")


def test_erasing_again_prints_the_certificate_and_changes_nothing(site: Site) -> None:
    """A second erase exits 0 with the same certificate; no file or record changes."""
    first = site.erase()
    assert first.code == 0, first.err
    before = site.certificate.read_bytes(), site.certificate.stat().st_mtime_ns, site.journal()
    again = site.erase(handler="sato", approver="tanaka")
    assert again.code == 0, again.err
    assert again.out == first.out
    after = site.certificate.read_bytes(), site.certificate.stat().st_mtime_ns, site.journal()
    assert after == before
    assert len(site.audit("erasure_completed")) == 1 and len(site.audit("erasure_started")) == 1


def test_a_batch_received_through_serve_is_published_to_the_ward(
    tmp_path: Path, template: Path
) -> None:
    """When the state DB knows the batch, its receipts get the certificate and it becomes ERASED."""
    site = make_site(tmp_path, template, channel="lgwan")
    cfg = site.cfg
    now = datetime.now().astimezone()
    store = StateStore.open(cfg.path(cfg.state.database), create=False)
    store.insert_batch(
        BatchRecord(BATCH, TENANT, "shinjuku-kaigo", f"{BATCH}.age", len(ENVELOPE),
                    _sha(ENVELOPE), BatchState.FORWARDED, now, now)
    )  # fmt: skip
    storage = Storage(cfg.path(cfg.storage.root), Limits(1 << 30, 1 << 30, 0))
    storage.ensure_tenant(TENANT)
    storage.close()
    store.close()

    result = site.erase()

    assert result.code == 0, result.err
    receipts = cfg.path(cfg.storage.root) / "tenants" / TENANT / "receipts"
    assert (receipts / f"{BATCH}.erasure.json").read_bytes() == site.certificate.read_bytes()
    store = StateStore.open(cfg.path(cfg.state.database), create=False)
    try:
        batch = store.get_batch(BATCH)
        assert batch is not None and batch.state is BatchState.ERASED
    finally:
        store.close()
    assert _certificate_body(site)["channel"] == "lgwan"


# -- refusals ---------------------------------------------------------------------------------


def test_handler_not_on_the_roster_is_refused(site: Site) -> None:
    """An unknown --as name is refused and audited; nothing is erased."""
    _refused(site, site.erase(handler="nobody"), "unknown_staff")


def test_wrong_password_is_refused(site: Site) -> None:
    """The handler's wrong password is refused and audited; nothing is erased."""
    result = site.erase(passwords=("wrong-password-99", PASSWORDS["suzuki"]))
    _refused(site, result, "bad_password")
    assert PASSWORDS["suzuki"] not in result.err and "wrong-password-99" not in result.err


def test_approver_who_is_not_a_manager_is_refused(site: Site) -> None:
    """A handler (取扱者) cannot approve an erasure."""
    _refused(site, site.erase(approver="sato"), "wrong_role")


def test_self_approval_is_refused_by_default(site: Site) -> None:
    """A manager erasing cannot approve his own erasure unless the configuration allows it."""
    _refused(site, site.erase(handler="suzuki", approver="suzuki"), "self_approval")


def test_self_approval_is_accepted_when_configured(site: Site) -> None:
    """With allow_self_approval the same manager may erase and approve."""
    site.set_custody(allow_self_approval=True)
    result = site.erase(handler="suzuki", approver="suzuki")
    assert result.code == 0, result.err
    body = _certificate_body(site)
    assert body["handler"] == body["approver"] == "suzuki"


def test_unknown_batch_is_refused(site: Site) -> None:
    """A batch neither spooled, in the state DB nor journaled: exit 1, nothing changes."""
    result = site.erase(batch=UNKNOWN)
    assert result.code == 1 and "unknown batch" in result.err and result.out == ""
    assert site.journal() == [] and (site.spool / f"{BATCH}.age").exists()


def test_not_a_batch_id_is_a_usage_error(site: Site) -> None:
    """A path trick instead of a batch id: exit 2 before anything is read."""
    assert site.erase(batch="../../etc/passwd").code == 2


# -- failures and crashes ---------------------------------------------------------------------


def _chattr(flag: str, path: Path) -> bool:
    if shutil.which("chattr") is None:
        return False
    done = subprocess.run(["chattr", flag, str(path)], capture_output=True, check=False)
    return done.returncode == 0


@pytest.fixture
def immutable(site: Site) -> Iterator[Path]:
    """One plaintext file made immutable (chattr +i), so it cannot be removed."""
    stuck = next(iter((site.work / BATCH).iterdir()))
    if not _chattr("+i", stuck):
        pytest.skip("chattr +i is not available here")
    yield stuck
    _chattr("-i", stuck)


def test_a_copy_that_cannot_be_removed_means_no_certificate(site: Site, immutable: Path) -> None:
    """exit 1, no certificate, the journal unfinished; once fixed, the next run completes."""
    digest = _sha(immutable.read_bytes())
    result = site.erase()
    assert result.code == 1, result.err
    assert str(immutable) in result.err and "no certificate" in result.err
    assert result.out == "" and not site.certificate.exists()
    assert not (site.spool / f"{BATCH}.erasure.json").exists()
    [(_batch, finished, certificate)] = site.journal()
    assert finished is None and certificate is None
    _chattr("-i", immutable)
    again = site.erase()
    assert again.code == 0, again.err
    assert _listed(site)[str(immutable)][1] == digest
    assert not immutable.exists()


def test_sigkill_during_erase_resumes_and_certifies_the_original_hashes(
    tmp_path: Path, template: Path
) -> None:
    """Killed after the journal is written: no certificate; the next run finishes it."""
    big = sealed_envelope(BATCH, padding=48 * (1 << 20))
    site = make_site(tmp_path, template, envelope=big)
    site.set_custody(overwrite_passes=4)
    before = _plaintext(site) | {str(site.spool / f"{BATCH}.age"): (len(big), _sha(big))}
    with _secret_fds((PASSWORDS["yamada"], PASSWORDS["suzuki"])) as fds:
        process = subprocess.Popen(
            [a.format(*fds) for a in site.argv(BATCH, "yamada", "suzuki")],
            cwd=site.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=fds,
            env=_env(),
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 120
        while not _journaled(site) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    [(_batch, finished, certificate)] = site.journal()
    assert finished is None and certificate is None
    assert not site.certificate.exists()
    assert not (site.spool / f"{BATCH}.erasure.json").exists()
    assert (site.spool / f"{BATCH}.age").exists()  # the envelope is wiped last

    result = site.erase()

    assert result.code == 0, result.err
    items = _listed(site)
    assert items == before
    assert not any(os.path.lexists(path) for path in items)
    assert [e["resumed"] for e in site.audit("erasure_started")] == [False, True]
    assert len(site.audit("erasure_completed")) == 1


def _journaled(site: Site) -> bool:
    try:
        return bool(site.journal())
    except sqlite3.Error:
        return False


def test_a_run_killed_after_writing_the_certificate_adopts_it(site: Site) -> None:
    """Killed between certificate and journal: the next run finishes with that certificate."""
    assert site.erase().code == 0
    issued = site.certificate.read_bytes()
    (site.spool / f"{BATCH}.erasure.json").unlink()
    database = site.root / "state.db"
    with contextlib.closing(sqlite3.connect(database)) as conn, conn:
        conn.execute("UPDATE custody_erasures SET finished_at = NULL, certificate = NULL")
    result = site.erase()
    assert result.code == 0, result.err
    assert site.certificate.read_bytes() == issued
    assert (site.spool / f"{BATCH}.erasure.json").read_bytes() == issued
    [(_batch, finished, certificate)] = site.journal()
    assert certificate == str(site.certificate)
    assert finished is not None
    body = _certificate_body(site)
    assert datetime.fromisoformat(str(finished)) == datetime.fromisoformat(str(body["finished_at"]))


def test_a_foreign_file_under_the_certificate_name_stops_before_erasing(site: Site) -> None:
    """Something else at certificates/<batch>.erasure.json: exit 1, nothing erased or replaced."""
    site.certificate.parent.mkdir(exist_ok=True)
    site.certificate.write_bytes(b"not a certificate\n")
    result = site.erase()
    assert result.code == 1 and "nothing was erased" in result.err, result.err
    assert site.certificate.read_bytes() == b"not a certificate\n"
    assert (site.spool / f"{BATCH}.age").exists() and (site.work / BATCH).is_dir()
    assert site.journal() == []
