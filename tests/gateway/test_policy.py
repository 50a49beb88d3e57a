"""The virtual filesystem's pure rules: path parsing, name patterns, permissions."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import policy
from gateway.policy import Area, NameKind, Op, PolicyError, VirtualPath

BATCH = "20260715-KAIGO-7F3KQ2"
RECEIPT = BATCH + ".receipt.json"
ERASURE = BATCH + ".erasure.json"
WARD, CONTRACTOR, FORWARDER = policy.ROLE_WARD, policy.ROLE_CONTRACTOR, policy.ROLE_FORWARDER

HOSTILE = [
    ("../etc/passwd", "dot_dot"),
    ("/inbox/../receipts", "dot_dot"),
    ("a/../../b", "dot_dot"),
    ("/etc/passwd", "unknown_area"),
    ("//inbox", "empty_component"),
    ("/inbox//" + BATCH + ".age", "empty_component"),
    ("/inbox/./" + BATCH + ".age", "dot_component"),
    ("/inbox\\" + BATCH + ".age", "backslash"),
    ("/inbox/" + BATCH + ".age\x00.txt", "nul_byte"),
    ("/inbox/\n" + BATCH + ".age", "control_character"),
    ("/inbox/" + "A" * 2000, "overlong"),
    ("/inbox/" + "A" * 300, "overlong"),
    ("/inbox/evil.sh", "bad_name"),
    ("/inbox/" + BATCH + ".age.part.exe", "bad_name"),
    ("/inbox/" + BATCH.lower() + ".age", "bad_name"),
    ("/inbox/" + BATCH + ".receipt.json", "bad_name"),
    ("/receipts/" + BATCH + ".age", "bad_name"),
    ("/inbox/" + ERASURE, "bad_name"),
    ("/receipts/" + BATCH + ".erasure.json.part", "bad_name"),
    ("/receipts/" + BATCH.lower() + ".erasure.json", "bad_name"),
    ("/outbox", "unknown_area"),
    ("/inbox/" + BATCH + ".age/x", "too_deep"),
    ("/inbox/" + BATCH + ".age/", "trailing_slash"),
    ("/inbox/\udcff", "not_utf8"),
]


@pytest.mark.parametrize(("raw", "reason"), HOSTILE)
def test_hostile_paths_are_refused_with_a_reason(raw: str, reason: str) -> None:
    """Every hostile client path is refused, naming why."""
    with pytest.raises(PolicyError) as refused:
        policy.parse(WARD, raw)
    assert refused.value.reason == reason


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/", policy.ROOT),
        (".", policy.ROOT),
        ("", policy.ROOT),
        ("/inbox", VirtualPath(Area.INBOX)),
        ("/inbox/", VirtualPath(Area.INBOX)),
        ("inbox", VirtualPath(Area.INBOX)),
        ("/inbox/" + BATCH + ".age.part", VirtualPath(Area.INBOX, BATCH + ".age.part")),
        ("inbox/" + BATCH + ".age", VirtualPath(Area.INBOX, BATCH + ".age")),
        (
            "/receipts/" + BATCH + ".receipt.json",
            VirtualPath(Area.RECEIPTS, BATCH + ".receipt.json"),
        ),
    ],
)
def test_ward_paths_parse_to_virtual_paths(raw: str, expected: VirtualPath) -> None:
    """Ordinary ward paths (absolute or relative to /) are accepted."""
    assert policy.parse(WARD, raw) == expected


def test_contractor_sees_only_the_outbox() -> None:
    """A contractor has /outbox and nothing else."""
    assert policy.parse(CONTRACTOR, "/outbox/" + BATCH + ".age").area is Area.OUTBOX
    for raw in ("/inbox", "/receipts", "/inbox/" + BATCH + ".age.part"):
        with pytest.raises(PolicyError) as refused:
            policy.parse(CONTRACTOR, raw)
        assert refused.value.reason == "unknown_area"


def test_unknown_role_sees_nothing() -> None:
    """A role outside ward/contractor is refused everything."""
    with pytest.raises(PolicyError) as refused:
        policy.parse("admin", "/")
    assert refused.value.reason == "unknown_role"


@pytest.mark.parametrize(
    ("name", "kind", "batch"),
    [
        (BATCH + ".age", NameKind.COMPLETE, BATCH),
        (BATCH + ".age.part", NameKind.PART, BATCH),
        (BATCH + ".receipt.json", NameKind.RECEIPT, BATCH),
        (BATCH + ".status.json", NameKind.STATUS, BATCH),
        (ERASURE, NameKind.ERASURE, BATCH),
        ("." + ERASURE + ".1f2e3d4c5b6a7980", None, None),
        ("x.erasure.json", None, None),
        ("." + BATCH + ".status.json.tmp", None, None),
        ("x.age", None, None),
        (BATCH + ".tmp", None, None),
        ("." + BATCH + ".receipt.json.tmp", None, None),
    ],
)
def test_name_patterns(name: str, kind: NameKind | None, batch: str | None) -> None:
    """File names are classified by the batch-id patterns only."""
    assert policy.name_kind(name) is kind
    assert policy.batch_of(name) == batch


@pytest.mark.parametrize(
    ("role", "raw", "allowed"),
    [
        (WARD, "/inbox/" + BATCH + ".age.part", {Op.STAT, Op.WRITE, Op.REMOVE, Op.SETSTAT}),
        (WARD, "/inbox/" + BATCH + ".age", {Op.STAT}),
        (WARD, "/receipts/" + BATCH + ".receipt.json", {Op.STAT, Op.READ}),
        (WARD, "/receipts/" + BATCH + ".status.json", {Op.STAT, Op.READ}),
        (WARD, "/inbox", {Op.LIST, Op.STAT}),
        (WARD, "/", {Op.LIST, Op.STAT}),
        (CONTRACTOR, "/outbox/" + BATCH + ".age", {Op.STAT, Op.READ, Op.REMOVE}),
        (CONTRACTOR, "/outbox/" + RECEIPT, {Op.STAT, Op.READ}),
        (CONTRACTOR, "/outbox/" + ERASURE, {Op.STAT, Op.READ, Op.WRITE}),
        (WARD, "/receipts/" + ERASURE, {Op.STAT, Op.READ}),
        (FORWARDER, "/receipts/" + ERASURE, {Op.STAT, Op.READ}),
        (FORWARDER, "/inbox/" + BATCH + ".age.part", {Op.STAT, Op.WRITE, Op.REMOVE, Op.SETSTAT}),
        (FORWARDER, "/inbox/" + BATCH + ".age", {Op.STAT}),
        (FORWARDER, "/receipts/" + RECEIPT, {Op.STAT, Op.READ}),
    ],
)
def test_permission_table(role: str, raw: str, allowed: set[Op]) -> None:
    """Each role may do exactly the listed operations on each kind of path."""
    path = policy.parse(role, raw)
    for op in Op:
        if op in allowed:
            policy.check(role, op, path)
        else:
            with pytest.raises(PolicyError):
                policy.check(role, op, path)


def test_only_completion_renames_are_allowed() -> None:
    """The one rename is X.age.part to X.age in /inbox, same batch id."""
    part = policy.parse(WARD, "/inbox/" + BATCH + ".age.part")
    done = policy.parse(WARD, "/inbox/" + BATCH + ".age")
    assert policy.check_completion(WARD, part, done) == BATCH
    other = policy.parse(WARD, "/inbox/20260715-KAIGO-AAAAAA.age")
    receipt = policy.parse(WARD, "/receipts/" + BATCH + ".receipt.json")
    for source, target in ((part, other), (done, part), (part, receipt), (part, part)):
        with pytest.raises(PolicyError):
            policy.check_completion(WARD, source, target)
    with pytest.raises(PolicyError):
        policy.check_completion(CONTRACTOR, part, done)


def test_forwarder_sees_what_a_ward_sees() -> None:
    """A forwarder has /inbox and /receipts only, and completes uploads like a ward."""
    assert [a.value for a in policy.AREAS_BY_ROLE[FORWARDER]] == ["inbox", "receipts"]
    with pytest.raises(PolicyError) as refused:
        policy.parse(FORWARDER, "/outbox/" + BATCH + ".age")
    assert refused.value.reason == "unknown_area"
    part = policy.parse(FORWARDER, "/inbox/" + BATCH + ".age.part")
    done = policy.parse(FORWARDER, "/inbox/" + BATCH + ".age")
    assert policy.check_completion(FORWARDER, part, done) == BATCH


def test_only_a_contractor_removing_an_outbox_envelope_confirms_a_pull() -> None:
    """Removing /outbox/<batch>.age is a contractor's pull confirmation; nothing else is."""
    outbox = policy.parse(CONTRACTOR, "/outbox/" + BATCH + ".age")
    assert policy.check_pull_confirmation(CONTRACTOR, outbox) == BATCH
    receipt = policy.parse(CONTRACTOR, "/outbox/" + RECEIPT)
    assert policy.check_pull_confirmation(CONTRACTOR, receipt) is None
    part = policy.parse(WARD, "/inbox/" + BATCH + ".age.part")
    assert policy.check_pull_confirmation(WARD, part) is None
    assert policy.check_pull_confirmation(FORWARDER, part) is None


def test_only_a_contractor_writing_an_outbox_certificate_uploads_one() -> None:
    """Writing /outbox/<batch>.erasure.json is a certificate upload; nothing else is."""
    upload = policy.parse(CONTRACTOR, "/outbox/" + ERASURE)
    assert policy.check_certificate_upload(CONTRACTOR, upload) == BATCH
    envelope = policy.parse(CONTRACTOR, "/outbox/" + BATCH + ".age")
    assert policy.check_certificate_upload(CONTRACTOR, envelope) is None
    for role in (WARD, FORWARDER):
        receipts = policy.parse(role, "/receipts/" + ERASURE)
        assert policy.check_certificate_upload(role, receipts) is None
        assert policy.visible(Area.RECEIPTS, ERASURE)
    assert policy.visible(Area.OUTBOX, ERASURE)
    assert not policy.visible(Area.INBOX, ERASURE)
    assert not policy.visible(Area.RECEIPTS, "." + ERASURE + ".1f2e3d4c")
    assert policy.file_name(BATCH, NameKind.ERASURE) == ERASURE


def test_file_name_refuses_non_batch_ids() -> None:
    """Building a file name needs a real batch id."""
    assert policy.file_name(BATCH, NameKind.PART) == BATCH + ".age.part"
    with pytest.raises(PolicyError):
        policy.file_name("../x", NameKind.COMPLETE)


def test_tenant_names_are_checked() -> None:
    """Tenant names (directory names in storage) follow the account rules."""
    assert policy.check_tenant("shinjuku") == "shinjuku"
    for bad in ("", "..", "a", "Shinjuku", "a/b", "x" * 40):
        with pytest.raises(PolicyError):
            policy.check_tenant(bad)


@given(
    st.sampled_from([WARD]),
    st.sampled_from(list(policy.AREAS_BY_ROLE[WARD])),
    st.from_regex(r"\A[0-9]{8}-[A-Z][A-Z0-9]{1,15}-[0-9A-Z]{6}\Z"),
)
def test_parse_round_trips_through_str(role: str, area: Area, batch: str) -> None:
    """str() of an accepted path parses back to the same path."""
    kind = policy.NAME_KINDS_BY_AREA[area][0]
    path = VirtualPath(area, policy.file_name(batch, kind))
    assert policy.parse(role, str(path)) == path
