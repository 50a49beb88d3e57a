"""The confined storage: symlinks refused, limits enforced, uploads stay resumable."""

import errno
import hashlib
import multiprocessing
import os
from pathlib import Path

import pytest

from gateway import storage as storage_mod
from gateway.policy import Area
from gateway.storage import Limits, Storage, StorageError

TENANT = "shinjuku"
PART = "20260715-KAIGO-7F3KQ2.age.part"
DONE = "20260715-KAIGO-7F3KQ2.age"
BIG = 1 << 40


def _storage(root: Path, **limits: int) -> Storage:
    values = {"max_upload_bytes": BIG, "tenant_quota_bytes": BIG, "reserve_free_bytes": 0}
    values.update(limits)
    store = Storage(root, Limits(**values))
    store.ensure_tenant(TENANT)
    return store


@pytest.fixture
def store(tmp_path: Path) -> Storage:
    """A storage tree under tmp_path/storage with one tenant."""
    return _storage(tmp_path / "storage")


def _inbox(tmp_path: Path, tenant: str = TENANT) -> Path:
    return tmp_path / "storage" / "tenants" / tenant / "inbox"


def test_layout_is_created_private(tmp_path: Path, store: Storage) -> None:
    """The tree has tenants/<t>/{inbox,receipts,outbox} and quarantine/, mode 0700."""
    for sub in ("tenants/shinjuku/inbox", "tenants/shinjuku/receipts", "quarantine"):
        assert (tmp_path / "storage" / sub).stat().st_mode & 0o777 == 0o700
    assert store.tenants() == [TENANT]


def test_upload_write_resume_and_publish(tmp_path: Path, store: Storage) -> None:
    """Writes at offsets build the file; a reopened upload continues; publish renames it."""
    upload = store.open_upload(TENANT, PART, create=True, truncate=False, exclusive=False)
    upload.write(0, b"hello ")
    upload.close()
    again = store.open_upload(TENANT, PART, create=False, truncate=False, exclusive=False)
    assert again.size == 6
    again.write(0, b"", append=True)
    again.write(6, b"world")
    again.close()
    store.publish(TENANT, Area.INBOX, PART, DONE)
    assert (_inbox(tmp_path) / DONE).read_bytes() == b"hello world"
    assert store.digest(TENANT, Area.INBOX, DONE) == (
        11,
        hashlib.sha256(b"hello world").hexdigest(),
    )
    assert (_inbox(tmp_path) / DONE).stat().st_mode & 0o777 == 0o600


def test_writes_never_leave_a_hole(store: Storage) -> None:
    """A write beyond the stored size is refused, so the file stays a prefix."""
    upload = store.open_upload(TENANT, PART, create=True, truncate=False, exclusive=False)
    upload.write(0, b"abc")
    with pytest.raises(StorageError) as refused:
        upload.write(10, b"x")
    assert refused.value.reason == "hole"
    assert upload.size == 3
    upload.close()


def test_publish_never_replaces(store: Storage) -> None:
    """Completion refuses to overwrite an existing completed file."""
    for name in (PART, DONE):
        store.open_upload(TENANT, name, create=True, truncate=False, exclusive=False).close()
    with pytest.raises(StorageError) as refused:
        store.publish(TENANT, Area.INBOX, PART, DONE)
    assert refused.value.reason == "exists"


def test_a_new_writer_supersedes_the_old_one(store: Storage) -> None:
    """Reopening an upload (reconnect) makes the stale handle's writes fail."""
    stale = store.open_upload(TENANT, PART, create=True, truncate=False, exclusive=False)
    fresh = store.open_upload(TENANT, PART, create=False, truncate=False, exclusive=False)
    with pytest.raises(StorageError) as refused:
        stale.write(0, b"x")
    assert refused.value.reason == "superseded"
    fresh.write(0, b"y")
    stale.close()
    fresh.close()


def test_upload_size_limit(tmp_path: Path) -> None:
    """A write past max_upload_bytes fails and keeps what was written."""
    store = _storage(tmp_path / "s", max_upload_bytes=10)
    upload = store.open_upload(TENANT, PART, create=True, truncate=False, exclusive=False)
    upload.write(0, b"12345678")
    with pytest.raises(StorageError) as refused:
        upload.write(8, b"abc")
    assert refused.value.reason == "upload_too_large"
    upload.close()
    assert store.stat(TENANT, Area.INBOX, PART).size == 8


def test_tenant_quota_counts_inbox_and_outbox(tmp_path: Path) -> None:
    """The quota is the sum of the tenant's stored bytes; removing frees it."""
    store = _storage(tmp_path / "s", tenant_quota_bytes=10)
    outbox = tmp_path / "s" / "tenants" / TENANT / "outbox" / DONE
    outbox.write_bytes(b"123456")
    upload = store.open_upload(TENANT, PART, create=True, truncate=False, exclusive=False)
    upload.write(0, b"1234")
    with pytest.raises(StorageError) as refused:
        upload.write(4, b"5")
    assert refused.value.reason == "quota_exceeded"
    upload.close()
    outbox.unlink()
    again = store.open_upload(TENANT, PART, create=False, truncate=False, exclusive=False)
    again.write(4, b"5")
    again.close()
    assert store.usage(TENANT) == 5


def test_free_space_reserve_fails_writes(tmp_path: Path) -> None:
    """A write that would leave less than reserve_free_bytes free fails (a full disk)."""
    store = _storage(tmp_path / "s", reserve_free_bytes=1 << 62)
    upload = store.open_upload(TENANT, PART, create=True, truncate=False, exclusive=False)
    with pytest.raises(StorageError) as refused:
        upload.write(0, b"x")
    assert refused.value.reason == "disk_reserve"
    upload.close()
    assert store.stat(TENANT, Area.INBOX, PART).size == 0


def test_enospc_fails_the_write_cleanly(store: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC from the kernel becomes disk_full; the valid prefix is kept."""
    upload = store.open_upload(TENANT, PART, create=True, truncate=False, exclusive=False)
    upload.write(0, b"abc")
    real = os.pwrite

    def full(fd: int, data: bytes, offset: int) -> int:
        if fd == upload._fd:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(storage_mod.os, "pwrite", full)
    with pytest.raises(StorageError) as refused:
        upload.write(3, b"def")
    assert refused.value.reason == "disk_full"
    assert str(refused.value) == "the gateway's disk is full; try again later"
    monkeypatch.undo()
    upload.write(3, b"def")
    upload.close()
    assert store.digest(TENANT, Area.INBOX, PART)[0] == 6


@pytest.mark.parametrize("what", ["file", "area", "tenant"])
def test_planted_symlinks_are_refused(tmp_path: Path, store: Storage, what: str) -> None:
    """A symlink planted as a file, an area or a tenant directory is never followed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret"
    secret.write_bytes(b"do not touch")
    tenant_dir = tmp_path / "storage" / "tenants" / TENANT
    if what == "file":
        (tenant_dir / "inbox" / PART).symlink_to(secret)
    elif what == "area":
        (tenant_dir / "inbox").rename(tmp_path / "old-inbox")
        (tenant_dir / "inbox").symlink_to(outside)
    else:
        tenant_dir.rename(tmp_path / "old-tenant")
        tenant_dir.symlink_to(outside)
    with pytest.raises(StorageError) as refused:
        store.open_upload(TENANT, PART, create=True, truncate=True, exclusive=False)
    assert refused.value.reason in ("symlink", "not_directory")
    with pytest.raises(StorageError):
        store.stat(TENANT, Area.INBOX, PART)
    assert secret.read_bytes() == b"do not touch"
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]


def test_listing_skips_symlinks_and_other_files(tmp_path: Path, store: Storage) -> None:
    """Only regular files are listed; a planted symlink or directory is not."""
    inbox = _inbox(tmp_path)
    (inbox / DONE).write_bytes(b"1")
    (inbox / PART).symlink_to("/etc/passwd")
    (inbox / "subdir").mkdir()
    assert [f.name for f in store.list_files(TENANT, Area.INBOX)] == [DONE]


def test_bad_names_and_tenants_are_refused(store: Storage) -> None:
    """Storage accepts single components only and valid tenant names only."""
    for name in ("..", "a/b", "", "x\x00y", "a" * 300):
        with pytest.raises(StorageError):
            store.stat(TENANT, Area.INBOX, name)
    with pytest.raises(StorageError) as refused:
        store.list_files("../etc", Area.INBOX)
    assert refused.value.reason == "bad_tenant"


def test_write_file_is_atomic_and_replaces(tmp_path: Path, store: Storage) -> None:
    """Receipts are written whole via a temporary file and rename."""
    name = "20260715-KAIGO-7F3KQ2.receipt.json"
    store.write_file(TENANT, Area.RECEIPTS, name, b"one")
    store.write_file(TENANT, Area.RECEIPTS, name, b"two")
    receipts = tmp_path / "storage" / "tenants" / TENANT / "receipts"
    assert sorted(p.name for p in receipts.iterdir()) == [name]
    assert (receipts / name).read_bytes() == b"two"


def test_quarantine_moves_the_file_out_of_reach(tmp_path: Path, store: Storage) -> None:
    """A quarantined file leaves the tenant's tree and lands in quarantine/."""
    (_inbox(tmp_path) / PART).write_bytes(b"dup")
    moved = store.quarantine(TENANT, Area.INBOX, PART, "duplicate_batch")
    assert not store.exists(TENANT, Area.INBOX, PART)
    assert (tmp_path / "storage" / "quarantine" / moved).read_bytes() == b"dup"
    assert moved.startswith("shinjuku--duplicate_batch--")


def test_remove_refuses_symlinks(tmp_path: Path, store: Storage) -> None:
    """remove() never unlinks through or at a planted symlink."""
    target = tmp_path / "keep"
    target.write_bytes(b"k")
    (_inbox(tmp_path) / PART).symlink_to(target)
    with pytest.raises(StorageError) as refused:
        store.remove(TENANT, Area.INBOX, PART)
    assert refused.value.reason == "symlink"
    assert target.exists()


def test_planted_hard_link_is_not_written(tmp_path: Path, store: Storage) -> None:
    """An upload name hard-linked to a file elsewhere is refused, never truncated."""
    target = tmp_path / "storage" / "victim"
    target.write_bytes(b"precious")
    os.link(target, _inbox(tmp_path) / PART)
    with pytest.raises(StorageError) as refused:
        store.open_upload(TENANT, PART, create=True, truncate=True, exclusive=False)
    assert refused.value.reason == "hard_link"
    assert target.read_bytes() == b"precious"


def test_truncating_reopen_supersedes_before_truncating(store: Storage) -> None:
    """Starting over ('w') first stops the old writer, then empties the file."""
    old = store.open_upload(TENANT, PART, create=True, truncate=False, exclusive=False)
    old.write(0, b"old data")
    new = store.open_upload(TENANT, PART, create=True, truncate=True, exclusive=False)
    assert new.size == 0
    with pytest.raises(StorageError):
        old.write(8, b"more")
    new.write(0, b"new")
    old.close()
    new.close()
    assert store.stat(TENANT, Area.INBOX, PART).size == 3


def _hammer(root: str, payload: bytes, count: int, failures: "multiprocessing.Queue[int]") -> None:
    writer = _storage(Path(root))
    failed = 0
    for _ in range(count):
        try:
            writer.write_file(TENANT, Area.RECEIPTS, "x.status.json", payload)
        except StorageError:
            failed += 1
    failures.put(failed)


def test_write_file_from_two_processes_never_fails_nor_leaves_temporaries(
    tmp_path: Path, store: Storage
) -> None:
    """serve's forwarder and `erase` both write status records: no lost write, no torn file."""
    failures: multiprocessing.Queue[int] = multiprocessing.Queue()
    writers = [
        multiprocessing.Process(
            target=_hammer, args=(str(tmp_path / "storage"), byte * 100_000, 300, failures)
        )
        for byte in (b"a", b"b")
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
    assert [failures.get(), failures.get()] == [0, 0]  # before the fix: ~40 % failed
    area = tmp_path / "storage" / "tenants" / TENANT / "receipts"
    assert sorted(p.name for p in Path(area).iterdir()) == ["x.status.json"]
    assert len(set((area / "x.status.json").read_bytes())) == 1


def test_failed_write_file_leaves_no_temporary(
    tmp_path: Path, store: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk while writing: disk_full, and nothing left behind in the area."""

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage_mod.os, "fsync", full)
    with pytest.raises(StorageError) as raised:
        store.write_file(TENANT, Area.RECEIPTS, "x.status.json", b"{}")
    assert raised.value.reason == "disk_full"
    assert list((tmp_path / "storage" / "tenants" / TENANT / "receipts").iterdir()) == []


def _count_statvfs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = os.fstatvfs

    def counting(fd: int) -> os.statvfs_result:
        calls.append(fd)
        return real(fd)

    monkeypatch.setattr(storage_mod.os, "fstatvfs", counting)
    return calls


def test_writes_spend_a_credit_between_limit_checks(
    store: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """32 KiB writes check free space and quota once per CREDIT_BYTES, not once per write."""
    calls = _count_statvfs(monkeypatch)
    upload = store.open_upload(TENANT, PART, create=True, truncate=False, exclusive=False)
    block = b"x" * 32768
    writes = 4 * storage_mod.CREDIT_BYTES // len(block)
    for number in range(writes):
        upload.write(number * len(block), block)
    upload.close()
    assert 1 <= len(calls) <= 4, len(calls)
    assert store.usage(TENANT) == writes * len(block)  # the unused credit is not counted


def test_quota_refusal_stays_exact_near_the_limit(tmp_path: Path) -> None:
    """Within a credit of the quota a writer reserves exactly what it writes: the last byte
    that fits is accepted and the first that does not is refused."""
    quota = storage_mod.CREDIT_BYTES + 100
    store = _storage(tmp_path / "s", tenant_quota_bytes=quota)
    upload = store.open_upload(TENANT, PART, create=True, truncate=False, exclusive=False)
    upload.write(0, b"a" * 50)  # reserves 50 and a credit
    upload.write(50, b"b" * (quota - 50))
    with pytest.raises(StorageError) as refused:
        upload.write(quota, b"c")
    assert refused.value.reason == "quota_exceeded"
    upload.close()
    assert store.stat(TENANT, Area.INBOX, PART).size == quota


def test_a_second_writer_sees_the_first_writers_credit_released_at_close(
    tmp_path: Path,
) -> None:
    """Credit held by an open upload counts against the quota until that upload closes."""
    quota = 2 * storage_mod.CREDIT_BYTES
    store = _storage(tmp_path / "s", tenant_quota_bytes=quota)
    first = store.open_upload(TENANT, PART, create=True, truncate=False, exclusive=False)
    first.write(0, b"a")  # 1 byte + one credit reserved
    other = "20260715-KAIGO-7F3KQ3.age.part"
    second = store.open_upload(TENANT, other, create=True, truncate=False, exclusive=False)
    second.write(0, b"b" * (quota - 1 - storage_mod.CREDIT_BYTES))  # what is left: exact
    with pytest.raises(StorageError):
        second.write(quota - 1 - storage_mod.CREDIT_BYTES, b"b")
    first.close()  # its unused credit is given back
    second.write(quota - 1 - storage_mod.CREDIT_BYTES, b"b" * storage_mod.CREDIT_BYTES)
    second.close()
    assert store.usage(TENANT) == quota


def test_open_uploads_credit_never_eats_into_the_disk_reserve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """16 uploads written in turn on a disk with 2 MiB above the reserve: at most 2 MiB in all
    (each upload's unwritten credit counts against the free space of the others)."""
    root = tmp_path / "s"
    reserve, usable = 64 << 20, 2 << 20
    store = _storage(root, reserve_free_bytes=reserve)
    real = os.fstatvfs

    def stored() -> int:
        return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())

    def fake(fd: int) -> os.statvfs_result:
        r = real(fd)
        free = reserve + usable - stored()
        return os.statvfs_result(
            (4096, 1, r.f_blocks, free, free, r.f_files, r.f_ffree, r.f_favail, r.f_flag,
             r.f_namemax)
        )  # fmt: skip

    monkeypatch.setattr(storage_mod.os, "fstatvfs", fake)
    uploads = [
        store.open_upload(TENANT, f"20260715-KAIGO-7F3K{n:02d}.age.part", create=True,
                          truncate=False, exclusive=False)
        for n in range(16)
    ]  # fmt: skip
    block = b"x" * 32768
    refused = 0
    for offset in range(0, storage_mod.CREDIT_BYTES + len(block), len(block)):
        for upload in uploads:
            try:
                upload.write(offset, block)
            except StorageError as exc:  # then "hole" for the rest of that upload
                assert exc.reason in ("disk_reserve", "hole")
                refused += exc.reason == "disk_reserve"
    for upload in uploads:
        upload.close()
    assert stored() <= usable and refused > 0, (stored(), refused)


def test_usage_keeps_the_credit_of_open_uploads(tmp_path: Path) -> None:
    """Asking for the usage while an upload holds credit does not hand that credit out again."""
    quota = 2 * storage_mod.CREDIT_BYTES
    store = _storage(tmp_path / "s", tenant_quota_bytes=quota)
    first = store.open_upload(TENANT, PART, create=True, truncate=False, exclusive=False)
    other = "20260715-KAIGO-7F3KQ3.age.part"
    second = store.open_upload(TENANT, other, create=True, truncate=False, exclusive=False)
    first.write(0, b"a")  # 1 byte and a credit
    assert store.usage(TENANT) == 1
    with pytest.raises(StorageError):
        second.write(0, b"b" * (quota - 1))
    first.write(1, b"a" * storage_mod.CREDIT_BYTES)  # spends its credit
    first.close()
    second.close()
    assert store.usage(TENANT) <= quota
