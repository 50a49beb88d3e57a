"""Regression tests of the custody review (issue 6) for gateway.erasure: what erase must find."""

import os
from pathlib import Path

import pytest

from gateway.erasure import (
    ErasureError,
    Places,
    find_copies,
    measure,
    quarantine_kind,
    remaining,
    shred_tree,
    wipe,
)

BATCH = "20260715-KAIGO-7F3KQ2"
OTHER = "20260716-JUMIN-AB12CD"
TENANT = "shinjuku"
STAMP = "20260715T010203000000Z"


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


# -- C1: plaintext of an interrupted open -----------------------------------------------------


def test_plaintext_of_an_interrupted_opening_is_found_and_wiped(places: Places) -> None:
    """C1: ``.opening-<batch>-XXXX/`` (open killed before its rename) is the batch's plaintext."""
    left = _put(places.work_dir / f".opening-{BATCH}-a1b2c3d4" / "print.csv", b"plaintext")
    other = _put(places.work_dir / f".opening-{OTHER}-zz99xx00" / "print.csv", b"not ours")
    found = find_copies(BATCH, TENANT, places)
    assert [(c.kind, c.path) for c in found] == [("plaintext", left)]
    items = tuple(measure(found, places))
    assert remaining(items, BATCH, places) == [str(left), str(left.parent)]
    with left.open("rb") as witness:
        wipe(items, BATCH, places, passes=1)
        assert witness.read() == bytes(len(b"plaintext"))
    assert remaining(items, BATCH, places) == []
    assert not left.parent.exists()
    assert other.read_bytes() == b"not ours"


def test_an_opening_that_names_no_batch_stops_every_erasure(places: Places) -> None:
    """C1: an unattributable ``.opening-…`` may hold this batch: refuse, touch nothing."""
    stray = _put(places.work_dir / ".opening-k2x9a0qz" / "print.csv", b"whose?")
    _put(places.spool / f"{BATCH}.age", b"envelope")
    with pytest.raises(ErasureError, match="interrupted opening of an unknown batch"):
        find_copies(BATCH, TENANT, places)
    with pytest.raises(ErasureError, match="interrupted opening of an unknown batch"):
        wipe((), BATCH, places, passes=1)
    assert stray.read_bytes() == b"whose?"


def test_an_opening_of_the_batch_that_is_a_link_is_refused(places: Places, tmp_path: Path) -> None:
    """M3 with C1: ``.opening-<batch>-…`` planted as a link is refused, not followed."""
    elsewhere = _put(tmp_path / "elsewhere" / "print.csv", b"keep")
    (places.work_dir / f".opening-{BATCH}-a1b2c3d4").symlink_to(elsewhere.parent)
    with pytest.raises(ErasureError, match="is a symbolic link"):
        find_copies(BATCH, TENANT, places)
    assert elsewhere.read_bytes() == b"keep"


# -- M3: links on the way to a copy ------------------------------------------------------------


def test_a_linked_quarantine_directory_is_refused_not_dropped(
    places: Places, tmp_path: Path
) -> None:
    """M3: ``storage/quarantine -> /bigdisk/quarantine`` holding a copy: refused, link kept."""
    bigdisk = tmp_path / "bigdisk" / "quarantine"
    copy = _put(bigdisk / f"{TENANT}--not_envelope--{STAMP}--{BATCH}.age", b"sealed")
    (places.storage / "quarantine").symlink_to(bigdisk)
    with pytest.raises(ErasureError, match="quarantine is a symbolic link"):
        find_copies(BATCH, TENANT, places)
    assert (places.storage / "quarantine").is_symlink() and copy.read_bytes() == b"sealed"


def test_a_linked_envelope_is_refused(places: Places, tmp_path: Path) -> None:
    """M3: ``spool/<batch>.age`` as a link to the real file elsewhere: refused."""
    real = _put(tmp_path / "elsewhere.age", b"sealed")
    (places.spool / f"{BATCH}.age").symlink_to(real)
    with pytest.raises(ErasureError, match=f"{BATCH}.age is a symbolic link"):
        find_copies(BATCH, TENANT, places)
    assert real.read_bytes() == b"sealed"


def test_a_linked_retained_area_is_refused(places: Places, tmp_path: Path) -> None:
    """M3: ``storage/tenants/<tenant>/inbox`` as a link: refused (a retained copy may be there)."""
    inbox = tmp_path / "inbox"
    _put(inbox / f"{BATCH}.age", b"sealed")
    (places.storage / "tenants" / TENANT).mkdir(parents=True)
    (places.storage / "tenants" / TENANT / "inbox").symlink_to(inbox)
    with pytest.raises(ErasureError, match="inbox is a symbolic link"):
        find_copies(BATCH, TENANT, places)


# -- L1: quarantine names parsed exactly ---------------------------------------------------------


def test_quarantine_names_of_a_tenant_with_a_longer_name_are_not_matched(places: Places) -> None:
    """L1: tenant ``city``'s erasure leaves ``city--north``'s quarantined copy alone."""
    q = places.storage / "quarantine"
    mine = _put(q / f"city--not_envelope--{STAMP}--{BATCH}.age", b"mine")
    theirs = _put(q / f"city--north--not_envelope--{STAMP}--{BATCH}.age", b"theirs")
    assert [c.path for c in find_copies(BATCH, "city", places)] == [mine]
    assert [c.path for c in find_copies(BATCH, "city--north", places)] == [theirs]


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        (f"{TENANT}--rejected--{STAMP}--{BATCH}.age", "quarantine"),
        (f"{TENANT}--sha256_mismatch--{STAMP}--{BATCH}.age.part", "staging"),
        (f"{TENANT}--{STAMP}--{BATCH}.age", None),
        (f"{TENANT}--rejected--20260715--{BATCH}.age", None),
        (f"{TENANT}--rejected--{STAMP}--x{BATCH}.age", None),
        (f"{TENANT}--rejected--{STAMP}--{BATCH}.age.bak", None),
        (f"x{TENANT}--rejected--{STAMP}--{BATCH}.age", None),
    ],
)
def test_quarantine_kind_parses_the_whole_name(name: str, kind: str | None) -> None:
    """``<tenant>--<label>--<stamp>--<batch>.age[.part]`` and nothing looser."""
    assert quarantine_kind(name, BATCH, TENANT) == kind


# -- L6: what open abandons is overwritten ------------------------------------------------------


def test_shred_tree_overwrites_before_removing_and_never_follows_links(tmp_path: Path) -> None:
    """Every file zeroed in place (even one with another name), links removed as links."""
    tree = tmp_path / f".opening-{BATCH}-a1b2c3d4"
    data = os.urandom(70_000)
    path = _put(tree / "print.csv", data)
    os.link(path, tmp_path / "other-name")
    outside = _put(tmp_path / "outside.txt", b"keep me")
    (tree / "link").symlink_to(outside)
    with path.open("rb") as witness:
        shred_tree(tree, passes=2)
        assert witness.read() == bytes(len(data))
    assert not tree.exists()
    assert (tmp_path / "other-name").read_bytes() == bytes(len(data))
    assert outside.read_bytes() == b"keep me"
    shred_tree(tree)  # gone already: fine
