"""custody.erasure_certificate: the body rules the print site, the gateway and the ward share."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from custody import MAX_CERTIFICATE_BYTES, BodyError, ErasureBody, check_erasure_body
from custody import erasure_certificate as rules

BATCH = "20260715-KAIGO-7F3KQ2"
SIGNER = "SHA256:print-site"


def _body(**changes: object) -> dict[str, object]:
    body: dict[str, object] = {
        "batch_id": BATCH,
        "tenant": "shinjuku",
        "channel": "lgwan",
        "items": [
            {"kind": "envelope", "path": f"/s/{BATCH}.age", "size": 10, "sha256": "e" * 64},
            {"kind": "plaintext", "path": f"/w/{BATCH}/a.csv", "size": 3, "sha256": "a" * 64},
        ],
        "method": "zero-overwrite-1-pass+unlink",
        "started_at": "2026-07-20T10:00:00.000+09:00",
        "finished_at": "2026-07-20T10:00:01.000+09:00",
        "handler": "yamada",
        "approver": "sato",
        "opened": True,
        "printsite_key": SIGNER,
    }
    body.update(changes)
    return body


def _code(body: dict[str, object]) -> str:
    with pytest.raises(BodyError) as info:
        check_erasure_body(body, signer=SIGNER)
    assert str(info.value) == rules.MESSAGES[info.value.code].format(**info.value.values)
    return info.value.code


def test_a_good_body_is_typed() -> None:
    """Fields come back typed: times aware, items as ErasedItem, the signer kept."""
    parsed = check_erasure_body(_body(), signer=SIGNER)
    assert isinstance(parsed, ErasureBody)
    assert parsed.finished_at == datetime(2026, 7, 20, 1, 0, 1, tzinfo=UTC)
    assert [(i.kind, i.name, i.folder) for i in parsed.items] == [
        ("envelope", f"{BATCH}.age", "s"),
        ("plaintext", "a.csv", BATCH),
    ]
    assert parsed.of_kind("plaintext") == parsed.items[1:]


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"extra": 1}, "fields"),
        ({"printsite_key": "SHA256:other"}, "printsite_key"),
        ({"batch_id": "../x"}, "batch_id"),
        ({"batch_id": "20261399-KAIGO-7F3KQ2"}, "batch_id"),
        ({"channel": "fax"}, "channel"),
        ({"opened": 1}, "opened"),
        ({"started_at": "2026-07-20T10:00:00"}, "time"),
        ({"finished_at": "2026-07-19T10:00:00+09:00"}, "time_order"),
        ({"handler": " "}, "text"),
        ({"method": "x" * 5000}, "text"),
        ({"items": []}, "items"),
        ({"items": [{"kind": "envelope"}]}, "item_fields"),
        ({"items": [{"kind": "receipt-copy", "path": "/c", "size": 1, "sha256": "c" * 64}]},
         "item_kind"),
        ({"items": [{"kind": "envelope", "path": "", "size": 1, "sha256": "c" * 64}]},
         "item_path"),
        ({"items": [{"kind": "envelope", "path": "/p", "size": True, "sha256": "c" * 64}]},
         "item_size"),
        ({"items": [{"kind": "envelope", "path": "/p", "size": 1, "sha256": "C" * 64}]},
         "item_sha256"),
    ],
)  # fmt: skip
def test_shape_rules(changes: dict[str, object], code: str) -> None:
    """Exact fields and types; ``receipt-copy`` (never produced) is not a kind."""
    assert code not in rules.CONSISTENCY_CODES
    assert _code(_body(**changes)) == code


def test_consistency_rules() -> None:
    """An envelope item; ``opened`` exactly when plaintext is listed."""
    plaintext_only = [{"kind": "plaintext", "path": f"/w/{BATCH}/a", "size": 1, "sha256": "a" * 64}]
    assert _code(_body(items=plaintext_only)) == "no_envelope"
    assert _code(_body(opened=False)) == "plaintext_not_opened"
    envelope_only = [{"kind": "envelope", "path": "/s/x", "size": 1, "sha256": "e" * 64}]
    assert _code(_body(items=envelope_only)) == "opened_without_plaintext"
    assert check_erasure_body(_body(items=envelope_only, opened=False), signer=SIGNER)
    assert {"no_envelope", "plaintext_not_opened", "opened_without_plaintext"} == set(
        rules.CONSISTENCY_CODES
    )


def test_hostile_values_are_escaped_and_bounded_in_messages() -> None:
    """Control characters never reach a terminal; long values are cut."""
    with pytest.raises(BodyError) as info:
        check_erasure_body(_body(channel="\x1b[2J" + "x" * 500), signer=SIGNER)
    assert "\x1b" not in str(info.value) and "\\x1b" in str(info.value)
    assert len(str(info.value)) < 200


@pytest.mark.parametrize(
    ("path", "inside"),
    [
        (f"/w/{BATCH}/a.csv", True),
        (f"/w/.opening-{BATCH}-a1b2_c3d/a.csv", True),
        (f"/w/.opening-{BATCH}-/a.csv", False),
        ("/w/.opening-20260716-JUMIN-AB12CD-a1b2c3d4/a.csv", False),
        (f"/w/{BATCH}/sub/a.csv", False),
        ("/tmp/a.csv", False),
    ],
)
def test_where_released_plaintext_lies(path: str, inside: bool) -> None:
    """``…/<batch>/NAME`` or ``…/.opening-<batch>-XXXX/NAME`` (an interrupted opening)."""
    item = rules.ErasedItem("plaintext", path, 1, "a" * 64)
    assert rules.in_work_directory(item, BATCH) is inside


def test_one_size_limit_and_one_list_of_kinds() -> None:
    """1 MiB everywhere; five kinds, no dead ``receipt-copy``."""
    assert MAX_CERTIFICATE_BYTES == 1 << 20
    assert rules.ITEM_KINDS == ("envelope", "plaintext", "staging", "quarantine", "retained")
    assert rules.opening_of(f".opening-{BATCH}-abc") == BATCH
    assert rules.opening_of(".opening-abc") is None
