"""Finding, measuring and wiping a batch's copies: every kind found, no link ever followed."""

import hashlib
import os
from pathlib import Path

import pytest

from gateway.erasure import (
    Copy,
    ErasureError,
    Places,
    find_copies,
    measure,
    method_name,
    remaining,
    unrecorded,
    wipe,
)
from gateway.state import ErasureItem

BATCH = "20260715-KAIGO-7F3KQ2"
OTHER = "20260716-JUMIN-AB12CD"
TENANT = "shinjuku"


@pytest.fixture
def places(tmp_path: Path) -> Places:
    """Empty spool, work and storage roots."""
    made = Places(tmp_path / "spool", tmp_path / "work", tmp_path / "storage")
    for root in (made.spool, made.work_dir, made.storage):
        root.mkdir()
    return made


def _put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _every_kind(places: Places) -> dict[Path, str]:
    """One copy of each kind (and decoys that are not copies); returns path → kind."""
    q = places.storage / "quarantine"
    copies = {
        _put(places.spool / f"{BATCH}.age", b"envelope"): "envelope",
        _put(places.spool / ".pull" / f"{BATCH}.age.part", b"pull"): "staging",
        _put(places.spool / f".{BATCH}.age.part", b"dvd"): "staging",
        _put(places.spool / f"{BATCH}.age.part", b"part"): "staging",
        _put(places.work_dir / BATCH / "print.csv", b"csv"): "plaintext",
        _put(places.work_dir / BATCH / "sub" / "deep.bin", b"deep"): "plaintext",
        _put(q / f"{TENANT}--not_envelope--20260715T010203000000Z--{BATCH}.age", b"q"): (
            "quarantine"
        ),
        _put(places.storage / "tenants" / TENANT / "inbox" / f"{BATCH}.age.part", b"r1"): (
            "staging"
        ),
        _put(q / f"{TENANT}--not_envelope--20260715T010203000001Z--{BATCH}.age.part", b"qp"): (
            "staging"
        ),
        _put(places.storage / "tenants" / TENANT / "outbox" / f"{BATCH}.age", b"r2"): "retained",
    }
    _put(places.spool / f"{OTHER}.age", b"other batch")
    _put(places.spool / f"{BATCH}.arrival.json", b"{}")
    _put(q / f"chiyoda--not_envelope--20260715T010203000000Z--{BATCH}.age", b"other tenant")
    _put(q / f"{TENANT}--not_envelope--20260715T010203000000Z--{OTHER}.age", b"other batch")
    _put(places.storage / "tenants" / "chiyoda" / "inbox" / f"{BATCH}.age", b"other tenant")
    return copies


def test_every_kind_of_copy_is_found_and_nothing_else(places: Places) -> None:
    """Spool, staging, work tree, quarantine and retained copies are found; decoys are not."""
    expected = _every_kind(places)
    found = find_copies(BATCH, TENANT, places)
    assert {c.path: c.kind for c in found} == expected
    assert found[0].kind == "plaintext"  # the most sensitive go first
    assert found[-1].kind == "envelope"


def test_measure_streams_size_and_sha256(places: Places) -> None:
    """Each copy's size and SHA-256 are those of its bytes (several blocks long)."""
    data = os.urandom(3 * (1 << 20) + 17)
    _put(places.work_dir / BATCH / "big.bin", data)
    [item] = measure(find_copies(BATCH, TENANT, places), places)
    assert item == ErasureItem(
        "plaintext", str(places.work_dir / BATCH / "big.bin"), len(data), _sha(data)
    )


def test_wipe_overwrites_in_place_before_unlinking(places: Places) -> None:
    """A descriptor kept open on the file shows its own blocks were zeroed before the name went."""
    data = os.urandom(300_000)
    path = _put(places.work_dir / BATCH / "print.csv", data)
    items = tuple(measure(find_copies(BATCH, TENANT, places), places))
    with path.open("rb") as witness:
        wipe(items, BATCH, places, passes=2)
        assert witness.read() == bytes(len(data))
    assert remaining(items, BATCH, places) == []
    assert not (places.work_dir / BATCH).exists()


def test_a_hard_link_outside_the_batch_is_refused_untouched(places: Places, tmp_path: Path) -> None:
    """A copy also named outside the batch is neither overwritten nor unlinked."""
    path = _put(places.work_dir / BATCH / "print.csv", b"personal data")
    outside = tmp_path / "outside"
    os.link(path, outside)
    items = tuple(measure(find_copies(BATCH, TENANT, places), places))
    with pytest.raises(ErasureError, match="2 hard links"):
        wipe(items, BATCH, places, passes=1)
    assert outside.read_bytes() == path.read_bytes() == b"personal data"


def test_two_recorded_names_of_one_file_are_both_wiped(places: Places) -> None:
    """A move interrupted between link and unlink leaves two recorded names: both go."""
    inbox = _put(places.storage / "tenants" / TENANT / "inbox" / f"{BATCH}.age", b"sealed")
    outbox = places.storage / "tenants" / TENANT / "outbox" / f"{BATCH}.age"
    outbox.parent.mkdir(parents=True)
    os.link(inbox, outbox)
    items = tuple(measure(find_copies(BATCH, TENANT, places), places))
    assert len(items) == 2
    wipe(items, BATCH, places, passes=1)
    assert remaining(items, BATCH, places) == []


def test_every_kind_is_wiped_and_checked(places: Places) -> None:
    """After wiping, no recorded path and no work directory exist; decoys stay."""
    _every_kind(places)
    items = tuple(measure(find_copies(BATCH, TENANT, places), places))
    wipe(items, BATCH, places, passes=1)
    assert remaining(items, BATCH, places) == []
    assert (places.spool / f"{OTHER}.age").read_bytes() == b"other batch"
    assert (places.spool / f"{BATCH}.arrival.json").exists()
    assert (places.storage / "tenants" / "chiyoda" / "inbox" / f"{BATCH}.age").exists()


def test_symlinks_in_the_work_tree_are_refused_never_followed(
    places: Places, tmp_path: Path
) -> None:
    """M3: a link to a file or a directory outside stops the search; nothing is touched."""
    outside = _put(tmp_path / "outside" / "keep.txt", b"keep me")
    _put(places.work_dir / BATCH / "print.csv", b"csv")
    (places.work_dir / BATCH / "file-link").symlink_to(outside)
    with pytest.raises(ErasureError, match="file-link is a symbolic link"):
        find_copies(BATCH, TENANT, places)
    (places.work_dir / BATCH / "file-link").unlink()
    (places.work_dir / BATCH / "dir-link").symlink_to(outside.parent)
    with pytest.raises(ErasureError, match="dir-link is a symbolic link"):
        find_copies(BATCH, TENANT, places)
    assert outside.read_bytes() == b"keep me"
    assert (places.work_dir / BATCH / "dir-link").is_symlink()


def test_a_work_directory_that_is_a_symlink_is_refused(places: Places, tmp_path: Path) -> None:
    """M3: ``work/<batch>`` planted as a link: refused (the plaintext may be where it points)."""
    elsewhere = tmp_path / "elsewhere"
    _put(elsewhere / "print.csv", b"not ours")
    (places.work_dir / BATCH).symlink_to(elsewhere)
    with pytest.raises(ErasureError, match="is a symbolic link"):
        find_copies(BATCH, TENANT, places)
    with pytest.raises(ErasureError, match="is a symbolic link"):
        wipe((), BATCH, places, passes=1)
    assert (places.work_dir / BATCH).is_symlink()
    assert (elsewhere / "print.csv").read_bytes() == b"not ours"


def test_a_directory_swapped_for_a_link_after_measuring_stops_the_wipe(
    places: Places, tmp_path: Path
) -> None:
    """A recorded file's directory replaced by a link: refused, the target untouched."""
    _put(places.work_dir / BATCH / "sub" / "deep.bin", b"deep")
    items = tuple(measure(find_copies(BATCH, TENANT, places), places))
    trap = _put(tmp_path / "trap" / "deep.bin", b"victim")
    (places.work_dir / BATCH / "sub" / "deep.bin").unlink()
    (places.work_dir / BATCH / "sub").rmdir()
    (places.work_dir / BATCH / "sub").symlink_to(trap.parent)
    with pytest.raises(ErasureError, match="sub is a symbolic link"):
        wipe(items, BATCH, places, passes=1)
    assert trap.read_bytes() == b"victim"
    assert (places.work_dir / BATCH / "sub").is_symlink()


def test_wipe_resumes_with_items_already_gone(places: Places) -> None:
    """Items removed by an earlier (interrupted) run are skipped; the rest are wiped."""
    _every_kind(places)
    items = tuple(measure(find_copies(BATCH, TENANT, places), places))
    (places.spool / f"{BATCH}.age").unlink()
    (places.work_dir / BATCH / "print.csv").write_bytes(b"\0\0\0")  # half-wiped
    wipe(items, BATCH, places, passes=1)
    assert remaining(items, BATCH, places) == []


def test_remaining_names_what_is_left(places: Places) -> None:
    """A recorded path that exists (even as a link) is reported, and so is the work dir."""
    path = _put(places.work_dir / BATCH / "print.csv", b"csv")
    items = (ErasureItem("plaintext", str(path), 3, _sha(b"csv")),)
    assert remaining(items, BATCH, places) == [str(path), str(places.work_dir / BATCH)]


def test_unrecorded_copies_are_those_the_journal_lacks(places: Places) -> None:
    """A copy that appeared after the journal was written is reported."""
    old = Copy("plaintext", places.work_dir / BATCH / "a.csv")
    new = Copy("plaintext", places.work_dir / BATCH / "b.csv")
    items = (ErasureItem("plaintext", str(old.path), 1, _sha(b"a")),)
    assert unrecorded([old, new], items) == [new]


def test_a_recorded_path_outside_its_root_is_refused(places: Places, tmp_path: Path) -> None:
    """A journal path not under the configured root (the config changed) stops the wipe."""
    stray = _put(tmp_path / "elsewhere" / "x.csv", b"x")
    items = (ErasureItem("plaintext", str(stray), 1, _sha(b"x")),)
    with pytest.raises(ErasureError, match="is not under the spool"):
        wipe(items, BATCH, places, passes=1)
    assert stray.exists()


def test_method_names_the_passes() -> None:
    """The certificate's method says how many zero passes were made."""
    assert method_name(1) == "zero-overwrite-1-pass+unlink"
    assert method_name(3) == "zero-overwrite-3-pass+unlink"
