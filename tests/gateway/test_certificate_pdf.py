"""The データ消去証明書 PDF: every field and item of the signed body, in Japanese and English."""

import hashlib
import stat
from pathlib import Path

import pytest
from pypdf import PdfReader

from gateway.certificate_pdf import CertificateView, render_certificate

BATCH = "20260715-KAIGO-7F3KQ2"


def _body(items: int = 3) -> dict[str, object]:
    listed: list[dict[str, object]] = [
        {
            "kind": "envelope",
            "path": f"/srv/print/spool/{BATCH}.age",
            "size": 123_456,
            "sha256": hashlib.sha256(b"envelope").hexdigest(),
        }
    ]
    listed += [
        {
            "kind": "plaintext",
            "path": f"/srv/print/work/{BATCH}/介護保険料納入通知書-{n:04d}.csv",
            "size": 1000 + n,
            "sha256": hashlib.sha256(str(n).encode()).hexdigest(),
        }
        for n in range(items - 1)
    ]
    return {
        "batch_id": BATCH,
        "tenant": "shinjuku",
        "channel": "lgwan",
        "items": listed,
        "method": "zero-overwrite-1-pass+unlink",
        "started_at": "2026-07-20T09:00:00.000+09:00",
        "finished_at": "2026-07-20T09:01:30.250+09:00",
        "handler": "yamada",
        "approver": "suzuki",
        "opened": True,
        "printsite_key": "SHA256:abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
    }


def _text(path: Path) -> str:
    """The text layer, runs joined (pypdf breaks lines where the font changes)."""
    return "".join(page.extract_text().replace("\n", "") for page in PdfReader(path).pages)


def _render(tmp_path: Path, body: dict[str, object]) -> Path:
    out = tmp_path / f"{BATCH}.erasure.pdf"
    names = {"yamada": "山田太郎", "suzuki": "鈴木花子"}
    render_certificate(out, CertificateView(body, f"{BATCH}.erasure.json", names))
    return out


def test_every_field_is_shown_with_bilingual_headings(tmp_path: Path) -> None:
    """Title, each heading in Japanese and English, each value, JST times and the SSD note."""
    out = _render(tmp_path, _body())
    text = _text(out)
    for words in (
        "データ消去証明書", "Erasure certificate", "バッチID", "Batch", BATCH, "委託元",
        "Tenant", "shinjuku", "Channel", "LGWAN-ASP", "消去方法", "Method",
        "zero-overwrite-1-pass+unlink", "Started", "2026年7月20日 09:00 JST", "Finished",
        "2026年7月20日 09:01 JST", "取扱者", "Handler", "山田太郎", "yamada",
        "Approving manager", "鈴木花子", "Print-site key",
        "SHA256:abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", "Opened", "SSD",
        "copy-on-write", f"{BATCH}.erasure.json", "verify-certificate",
    ):  # fmt: skip
        assert words in text, words


def test_every_item_has_kind_path_size_and_sha256(tmp_path: Path) -> None:
    """Each erased item appears with its kind, path, size and full SHA-256."""
    body = _body()
    text = _text(_render(tmp_path, body))
    items = body["items"]
    assert isinstance(items, list)
    for item in items:
        assert str(item["sha256"]) in text
        assert f"{item['size']:,}" in text
    assert "Envelope" in text and "Plaintext" in text
    assert "介護保険料納入通知書-0001.csv" in text


def test_many_items_flow_onto_further_pages(tmp_path: Path) -> None:
    """Hundreds of items are all printed, over as many pages as they need."""
    body = _body(items=120)
    out = _render(tmp_path, body)
    pages = PdfReader(out).pages
    assert len(pages) > 3
    text = _text(out)
    items = body["items"]
    assert isinstance(items, list)
    assert all(str(item["sha256"]) in text for item in items)


def test_the_pdf_is_readable_by_others(tmp_path: Path) -> None:
    """The certificate holds no secret: mode 0644, so it can be handed over."""
    out = _render(tmp_path, _body())
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


@pytest.mark.parametrize(
    "change",
    [
        {"started_at": "2026-07-20T09:00:00"},
        {"items": "none"},
        {"items": [{"kind": "envelope", "path": "x", "size": "1", "sha256": "0" * 64}]},
        {"opened": "yes"},
        {"handler": None},
    ],
)
def test_a_malformed_body_writes_nothing(tmp_path: Path, change: dict[str, object]) -> None:
    """A body lacking a field or holding one of the wrong type is refused before writing."""
    with pytest.raises(ValueError):
        _render(tmp_path, _body() | change)
    assert list(tmp_path.iterdir()) == []
