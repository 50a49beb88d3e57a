"""What an account holder is handed: the credential notice PDF and a ready client configuration.

The 利用者ID・パスワード通知書 (account credential notice) is the paper that carries a password.

One A4 page: where to connect (gateway address and port), the two fingerprints
the ward pins (SSH host key, receipt-signing key), the account (user id,
tenant, role), the password in large monospace, and how the notice must travel
(by hand or registered mail; never by e-mail or over the transfer channel).
Its text layer has one line ``User: <name>`` and one line ``Password: <pw>``,
each drawn as a single Latin string, so ``pdftotext``/pypdf yield them whole.
The password never goes into the PDF metadata, a log or an exception message.

The client configuration (``user add --client-config-out``) holds no secret:
the gateway's address, its pinned host key and receipt-signing key (OpenSSH
public-key lines), the account and tenant, and where the ward keeps its
private key; and, when the tenant's route pins the print site's signing key
(its ``receipt_key``, :func:`printsite_signing_key`), a ``[printsite]`` section
with that key, which signs the erasure certificates the ward verifies. It
travels with the notice so nobody types fingerprints.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from reportlab.lib.colors import Color, black
from reportlab.pdfgen.canvas import Canvas

from custody import keys
from custody.errors import KeyFormatError
from gateway.config import GatewayConfig
from gateway.i18n import _
from gateway.pdf import (
    GOTHIC,
    LATIN,
    MARGIN,
    MINCHO,
    MONO_BOLD,
    PAGE_HEIGHT,
    PAGE_WIDTH,
    draw_bilingual,
    draw_text,
    format_jst,
    text_width,
    wrap,
    write_pdf,
)

TITLE_JA = "利用者ID・パスワード通知書"
TITLE_EN = "Account credential notice"
USER_LABEL = "User: "
PASSWORD_LABEL = "Password: "  # noqa: S105 -- a printed label, not a secret

PASSWORD_SIZE = 22.0
"""Point size of the password line; it is condensed horizontally if too wide."""

REASON_NEW = ("新規発行", "New account")
REASON_RESET = ("再発行", "Password reset")

ROLE_NAMES = {
    "ward": ("区（送信）", "ward, uploads"),
    "contractor": ("委託先（受信）", "contractor, pulls"),
}

READING_NOTE = (
    "パスワードは印字どおり、ハイフンを含めて正確に入力してください。",
    "Type the password exactly as printed, hyphens included. "
    "Generated passwords never use the letters O, I, L or U.",
)

HANDLING = (
    (
        "本通知書は手渡しまたは簡易書留で届けます。電子メール、FAX、データの転送経路では"
        "決して送りません。",
        "This notice is delivered by hand or by registered mail; never by e-mail, fax "
        "or over the data-transfer channel.",
    ),
    (
        "受領後は鍵付キャビネットに施錠して保管してください。パスワードが他人に知られたおそれが"
        "あるときは、直ちに運用者（委託先）に連絡し、変更を受けてください。",
        "Keep this notice in a locked cabinet. If the password may have become known to anyone "
        "else, tell the operator (contractor) at once to have it changed.",
    ),
    (
        "ログインにはこのパスワードと、区の端末の秘密鍵の両方が必要です。"
        "パスワードを他人に教えたり、端末に保存したりしないでください。",
        "Login needs both this password and the ward PC's private key. Never share the "
        "password or store it on the PC.",
    ),
    (
        "上記のフィンガープリントが接続時の表示と一致することを確認してください。",
        "Check that the fingerprints above match what the client shows when it connects.",
    ),
)

_GREY = Color(0.93, 0.93, 0.93)
_RED = Color(0.75, 0.05, 0.05)
_CONTENT_WIDTH = PAGE_WIDTH - 2 * MARGIN


@dataclass(frozen=True)
class CredentialNotice:
    """What a credential notice says. ``password`` is kept out of repr."""

    user: str
    tenant: str
    role: str
    password: str = field(repr=False)
    gateway_address: str
    host_key_fingerprint: str
    signing_key_fingerprint: str
    issued_at: datetime
    issued_by: str
    reset: bool = False


def render_credential_notice(out: Path, notice: CredentialNotice) -> None:
    """Write the credential notice to ``out`` (atomically, mode 0600).

    Args:
        out: Destination PDF path; its directory must exist.
        notice: What to print.

    Raises:
        ValueError: a field is unusable (the message never contains the password).
        OSError: the file could not be written; ``out`` is left as it was.
    """
    _check(notice)
    issued = format_jst(notice.issued_at)  # raises ValueError on a naive datetime
    role_ja, role_en = ROLE_NAMES.get(notice.role, (notice.role, notice.role))
    reason_ja, reason_en = REASON_RESET if notice.reset else REASON_NEW
    rows = (
        ("接続先", "Gateway (host:port)", notice.gateway_address),
        ("ホスト鍵", "Host key", notice.host_key_fingerprint),
        ("受領証署名鍵", "Receipt-signing key", notice.signing_key_fingerprint),
        ("利用者ID", "User ID", notice.user),
        ("テナント", "Tenant", notice.tenant),
        ("権限", "Role", f"{role_ja} ({role_en})"),
        ("発行区分", "Issued for", f"{reason_ja} ({reason_en})"),
        ("発行日時", "Issued", issued),
        ("発行者", "Issued by", notice.issued_by),
    )

    def draw(canvas: Canvas) -> None:
        y = _draw_header(canvas, reset=notice.reset)
        y = _draw_details(canvas, y, rows)
        y = _draw_password(canvas, y, notice.user, notice.password)
        y = _draw_handling(canvas, y)
        _draw_receipt(canvas, y)
        _draw_footer(canvas, notice.user)
        canvas.showPage()

    write_pdf(
        out,
        draw,
        title=f"{TITLE_JA} ({TITLE_EN}) {notice.user}",
        subject=f"{notice.tenant} {notice.user}",
        author=notice.issued_by,
    )


def _check(notice: CredentialNotice) -> None:
    for problem, value in (
        (_("the user must be non-empty printable ASCII"), notice.user),
        (_("the gateway address must be non-empty printable ASCII"), notice.gateway_address),
    ):
        if not value or not value.isascii() or not value.isprintable():
            raise ValueError(problem)
    password = notice.password
    if not password or not password.isprintable() or password != password.strip():
        raise ValueError(_("the password must be printable, without surrounding spaces"))
    if not password.isascii():
        raise ValueError(_("the password must be ASCII to be printed in monospace"))


def _draw_header(canvas: Canvas, *, reset: bool) -> float:
    top = PAGE_HEIGHT - MARGIN
    stamp_w, stamp_h = 150.0, 22.0
    canvas.setStrokeColor(_RED)
    canvas.setFillColor(_RED)
    canvas.setLineWidth(1.5)
    canvas.rect(PAGE_WIDTH - MARGIN - stamp_w, top - stamp_h, stamp_w, stamp_h)
    draw_bilingual(
        canvas, PAGE_WIDTH - MARGIN - stamp_w / 2, top - 15, "取扱注意", "Confidential",
        size=11, centred=True,
    )  # fmt: skip
    canvas.setFillColor(black)
    canvas.setStrokeColor(black)
    draw_text(canvas, MARGIN, top - 15, "LGWAN-ASP", size=10.5)
    y = top - 62
    draw_bilingual(canvas, PAGE_WIDTH / 2, y, TITLE_JA, TITLE_EN, size=20, centred=True)
    canvas.setLineWidth(1)
    canvas.line(MARGIN, y - 12, PAGE_WIDTH - MARGIN, y - 12)
    y -= 32
    which = "変更後のパスワード" if reset else "初期パスワード"
    ja = f"LGWAN-ASP 印刷データ受渡しサービス（SFTP）の利用者IDと{which}をお知らせします。"
    which_en = "new password" if reset else "initial password"
    en = f"This notice gives the user ID and {which_en} for the LGWAN-ASP print-data drop (SFTP)."
    y = _paragraph(canvas, y, ja, size=10.5)
    return _paragraph(canvas, y, en, size=9.5, font=LATIN) - 8


def _draw_details(canvas: Canvas, y: float, rows: tuple[tuple[str, str, str], ...]) -> float:
    row_h, label_w = 19.0, 170.0
    top = y
    canvas.setFillColor(_GREY)
    canvas.rect(MARGIN, top - row_h * len(rows), label_w, row_h * len(rows), stroke=0, fill=1)
    canvas.setFillColor(black)
    canvas.setLineWidth(0.6)
    for ja, en, value in rows:
        baseline = y - row_h + 6
        draw_bilingual(canvas, MARGIN + 8, baseline, ja, en, size=9.5)
        size = 10.0
        room = _CONTENT_WIDTH - label_w - 20
        while size > 6 and text_width(value, size=size) > room:
            size -= 0.5
        draw_text(canvas, MARGIN + label_w + 10, baseline, value, size=size)
        canvas.line(MARGIN, y - row_h, PAGE_WIDTH - MARGIN, y - row_h)
        y -= row_h
    canvas.rect(MARGIN, y, _CONTENT_WIDTH, top - y)
    canvas.line(MARGIN + label_w, y, MARGIN + label_w, top)
    return y - 26


def _draw_password(canvas: Canvas, y: float, user: str, password: str) -> float:
    draw_bilingual(canvas, MARGIN, y, "利用者ID・パスワード", "User ID and password", size=13)
    box_top = y - 10
    box_h = 100.0
    canvas.setLineWidth(2)
    canvas.rect(MARGIN, box_top - box_h, _CONTENT_WIDTH, box_h)
    inner = _CONTENT_WIDTH - 32
    canvas.setFont(MONO_BOLD, 14)
    canvas.drawString(MARGIN + 16, box_top - 24, f"{USER_LABEL}{user}")
    line = f"{PASSWORD_LABEL}{password}"
    width = text_width(line, size=PASSWORD_SIZE, font=MONO_BOLD)
    canvas.saveState()  # horizontal scaling is graphics state: keep it to this line
    text = canvas.beginText(MARGIN + 16, box_top - 56)
    text.setFont(MONO_BOLD, PASSWORD_SIZE)
    text.setHorizScale(min(100.0, 100.0 * inner / width))
    text.textOut(line)
    canvas.drawText(text)
    canvas.restoreState()
    draw_text(canvas, MARGIN + 16, box_top - 76, READING_NOTE[0], size=8.5)
    canvas.setFont(LATIN, 7.5)
    canvas.drawString(MARGIN + 16, box_top - 89, READING_NOTE[1])
    canvas.setLineWidth(1)
    return box_top - box_h - 26


def _draw_handling(canvas: Canvas, y: float) -> float:
    draw_bilingual(canvas, MARGIN, y, "取扱い", "Handling", size=13)
    y -= 19
    for n, (ja, en) in enumerate(HANDLING, start=1):
        canvas.setFont(GOTHIC, 10)
        canvas.drawString(MARGIN + 4, y, f"{n}.")
        y = _paragraph(canvas, y, ja, size=10, indent=20)
        y = _paragraph(canvas, y, en, size=8.5, font=LATIN, indent=20) - 4
    return y - 10


def _draw_receipt(canvas: Canvas, y: float) -> float:
    draw_bilingual(canvas, MARGIN, y, "受領確認", "Receipt", size=13)
    top = y - 10
    row_h = 26.0
    label_w = 170.0
    rows = (
        ("受領日", "Date received", "　　　　年　　　月　　　日"),
        ("受領者 所属・氏名", "Recipient", ""),
        ("受渡方法", "Delivered", "□ 手渡し (by hand)　　□ 簡易書留 (registered mail)"),
    )
    seal_w = 86.0
    table_w = _CONTENT_WIDTH - seal_w
    canvas.setLineWidth(0.8)
    canvas.rect(MARGIN, top - row_h * len(rows), _CONTENT_WIDTH, row_h * len(rows))
    canvas.line(MARGIN + label_w, top, MARGIN + label_w, top - row_h * len(rows))
    canvas.line(MARGIN + table_w, top, MARGIN + table_w, top - row_h * len(rows))
    for i, (ja, en, filler) in enumerate(rows):
        baseline = top - row_h * (i + 1) + 9
        draw_bilingual(canvas, MARGIN + 8, baseline, ja, en, size=9.5)
        draw_text(canvas, MARGIN + label_w + 10, baseline, filler, size=9)
        if i:
            canvas.line(MARGIN, top - row_h * i, MARGIN + table_w, top - row_h * i)
    canvas.setFont(GOTHIC, 9)
    canvas.drawCentredString(MARGIN + table_w + seal_w / 2, top - 14, "印・署名")
    canvas.setFont(LATIN, 7.5)
    canvas.drawCentredString(MARGIN + table_w + seal_w / 2, top - 24, "Seal / signature")
    return top - row_h * len(rows)


def _draw_footer(canvas: Canvas, user: str) -> None:
    canvas.setFillColor(black)
    draw_text(canvas, MARGIN, MARGIN - 16, "lgwan-gateway", size=8)
    canvas.setFont(LATIN, 8)
    canvas.drawRightString(PAGE_WIDTH - MARGIN, MARGIN - 16, f"{TITLE_EN} / {user}")


def _paragraph(
    canvas: Canvas, y: float, text: str, *, size: float, font: str = MINCHO, indent: float = 0.0
) -> float:
    """Draw wrapped text starting at baseline ``y``; return the next free baseline."""
    for line in wrap(text, size=size, width=_CONTENT_WIDTH - indent, font=font):
        draw_text(canvas, MARGIN + indent, y, line, size=size, font=font)
        y -= size * 1.45
    return y


CERTIFICATE_DIR = "certificates"
"""Where the ward keeps the erasure certificates it fetched (``[printsite] certificate_dir``)."""


@dataclass(frozen=True)
class ClientConfig:
    """The ``[identity]``, ``[gateway]`` and ``[printsite]`` settings of a client configuration.

    ``printsite_key`` is the print site's pinned signing key; empty leaves the
    ``[printsite]`` section out.
    """

    host: str
    port: int
    user: str
    tenant: str
    host_key: str
    receipt_key: str
    private_key: str
    printsite_key: str = ""


def printsite_signing_key(config: GatewayConfig, tenant: str) -> str:
    """The print site's signing key pinned on ``tenant``'s route, as one OpenSSH line; or "".

    That is the tenant table's ``receipt_key`` (for an sftp:// route it is the
    print site's receipt key anyway; file:// and pull routes may pin one). A
    value that is not one ``ssh-ed25519`` line counts as none (``serve``
    refuses to start with it).
    """
    section = config.tenants.get(tenant)
    if section is None or not section.receipt_key.strip():
        return ""
    try:
        return keys.public_key_to_openssh(keys.load_public_key(section.receipt_key))
    except KeyFormatError:
        return ""


def render_client_config(config: ClientConfig) -> str:
    """The client configuration as TOML (keys as ``config/client.example.toml`` names them)."""
    gateway = {
        "host": config.host,
        "port": config.port,
        "user": config.user,
        "tenant": config.tenant,
        "host_key": config.host_key,
        "receipt_key": config.receipt_key,
    }
    lines = [
        f"# lgwan-client configuration for account {config.user} (tenant {config.tenant}),",
        "# written by `lgwan-gateway user add`. It holds no secret: the password is on the",
        "# credential notice, and the private key never leaves the ward PC.",
        "",
        "[identity]",
        "# The ward's Ed25519 private key (lgwan-client keygen); must be mode 0600.",
        f"private_key = {toml_value(config.private_key)}",
        "",
        "[gateway]",
        "# The gateway's SSH host key and receipt-signing key, pinned.",
        *(f"{key} = {toml_value(value)}" for key, value in gateway.items()),
    ]
    if config.printsite_key:
        lines += [
            "",
            "[printsite]",
            "# The print site's signing key, pinned: it signs the erasure certificates",
            "# (lgwan-client status fetches them, verify-certificate checks them).",
            f"signing_key = {toml_value(config.printsite_key)}",
            f"certificate_dir = {toml_value(CERTIFICATE_DIR)}",
        ]
    return "\n".join(lines) + "\n"


def write_client_config(out: Path, config: ClientConfig) -> None:
    """Write the client configuration to ``out`` atomically (mode 0644: it holds no secret).

    Raises:
        OSError: the file could not be written; ``out`` is left as it was.
    """
    data = render_client_config(config).encode("utf-8")
    tmp = out.with_name(f".{out.name}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def toml_value(value: object) -> str:
    """One TOML scalar; JSON's string syntax is valid for TOML basic strings.

    Raises:
        TypeError: not a bool, int or str.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"no TOML form for {type(value).__name__}")
