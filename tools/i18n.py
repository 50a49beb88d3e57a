"""Keep the Japanese catalogs complete: extract, update, compile and check.

    python tools/i18n.py check    # exit 1: a message lacks Japanese, or a .mo is stale
    python tools/i18n.py update   # add new messages (empty msgstr), drop gone ones
    python tools/i18n.py compile  # write the .mo files from the .po files
    python tools/i18n.py merge F.json...  # update, then take {"English": "日本語"} files

Messages are the string literals given to ``_()`` and ``ngettext()`` in a
package (found with :mod:`ast`, so a message built at run time — an f-string
inside ``_()`` — is reported, never silently untranslated), plus argparse's
own words, which :func:`gateway.i18n.install` routes through the same catalog.
The ``.po`` files are the source; the ``.mo`` files are committed beside them
so an installed package needs no build step, and ``check`` proves they match.
"""

import ast
import json
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CATALOGS = {"client": "lgwan-client", "gateway": "lgwan-gateway"}
LANGUAGE = "ja"

ARGPARSE_MESSAGES = (
    "usage: ",
    "options",
    "positional arguments",
    "show this help message and exit",
    "the following arguments are required: %s",
    "unrecognized arguments: %s",
    "expected one argument",
    "argument %(argument_name)s: %(message)s",
    "invalid choice: %(value)r (choose from %(choices)s)",
    "invalid %(type)s value: %(value)r",
    "not allowed with argument %s",
    "one of the arguments %s is required",
    "ambiguous option: %(option)s could match %(matches)s",
)
"""argparse's words across Python 3.11-3.13 (a msgid it no longer uses is harmless)."""


@dataclass
class Entry:
    """One message: its English id, its translation, and where it is used."""

    msgid: str
    msgstr: str
    plural: str | None = None
    msgstr_plural: str = ""
    where: str = ""


def _literal(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def extract(package: Path) -> tuple[dict[str, Entry], list[str]]:
    """Every message used in ``package``, and the calls whose message is not a literal."""
    found: dict[str, Entry] = {m: Entry(m, "", where="argparse") for m in ARGPARSE_MESSAGES}
    problems: list[str] = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if node.func.id == "_" and node.args:
                text = _literal(node.args[0])
                if text is None:
                    problems.append(f"{where}: _() needs a string literal")
                else:
                    found.setdefault(text, Entry(text, "", where=where))
            elif node.func.id == "ngettext" and len(node.args) >= 2:
                one, many = _literal(node.args[0]), _literal(node.args[1])
                if one is None or many is None:
                    problems.append(f"{where}: ngettext() needs string literals")
                else:
                    found.setdefault(one, Entry(one, "", plural=many, where=where))
    return found, problems


def _unquote(text: str) -> str:
    value = ast.literal_eval(text)
    if not isinstance(value, str):
        raise ValueError(f"not a string: {text}")
    return value


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped.replace(chr(9), chr(92) + "t")}"'


def read_po(path: Path) -> dict[str, Entry]:
    """Parse the subset of the PO format this project writes (no contexts)."""
    entries: dict[str, Entry] = {}
    if not path.exists():
        return entries
    fields: dict[str, str] = {}
    current = ""

    def flush() -> None:
        if "msgid" in fields:
            entry = Entry(
                fields["msgid"],
                fields.get("msgstr", fields.get("msgstr[0]", "")),
                plural=fields.get("msgid_plural"),
                msgstr_plural=fields.get("msgstr[1]", ""),
            )
            entries[entry.msgid] = entry
        fields.clear()

    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            if not line:
                flush()
            continue
        if line.startswith('"'):
            fields[current] += _unquote(line)
            continue
        key, _, rest = line.partition(" ")
        if key == "msgid" and "msgid" in fields and current != "msgid":
            flush()
        current = key
        fields[key] = _unquote(rest)
    flush()
    return entries


def write_po(path: Path, domain: str, entries: dict[str, Entry]) -> None:
    """Write the catalog: header, then messages in order of first use."""
    lines = [
        f"# Japanese messages of {domain}.",
        'msgid ""',
        'msgstr ""',
        '"Content-Type: text/plain; charset=UTF-8\\n"',
        f'"Language: {LANGUAGE}\\n"',
        '"Plural-Forms: nplurals=1; plural=0;\\n"',
        "",
    ]
    for entry in entries.values():
        if not entry.msgid:
            continue
        if entry.where:
            lines.append(f"#: {entry.where}")
        lines.append(f"msgid {_quote(entry.msgid)}")
        if entry.plural is not None:
            lines.append(f"msgid_plural {_quote(entry.plural)}")
            lines.append(f"msgstr[0] {_quote(entry.msgstr)}")
        else:
            lines.append(f"msgstr {_quote(entry.msgstr)}")
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")


def compile_mo(entries: dict[str, Entry]) -> bytes:
    """The GNU ``.mo`` bytes for the translated entries (plus the header)."""
    header = (
        "Content-Type: text/plain; charset=UTF-8\n"
        f"Language: {LANGUAGE}\nPlural-Forms: nplurals=1; plural=0;\n"
    )
    pairs = {"": header}
    for entry in entries.values():
        if entry.msgid and entry.msgstr:
            key = entry.msgid if entry.plural is None else f"{entry.msgid}\0{entry.plural}"
            pairs[key] = entry.msgstr
    keys = sorted(pairs)
    ids = [k.encode("utf-8") for k in keys]
    strs = [pairs[k].encode("utf-8") for k in keys]
    count = len(keys)
    start = 7 * 4 + 16 * count
    offsets: list[int] = []
    blob = b""
    for data in (*ids, *strs):
        offsets.append(len(blob))
        blob += data + b"\0"
    table = b""
    for index, data in enumerate((*ids, *strs)):
        table += struct.pack("<II", len(data), start + offsets[index])
    head = struct.pack("<7I", 0x950412DE, 0, count, 28, 28 + 8 * count, 0, start)
    return head + table + blob


def _paths(package: str, domain: str) -> tuple[Path, Path]:
    folder = ROOT / package / "locale" / LANGUAGE / "LC_MESSAGES"
    return folder / f"{domain}.po", folder / f"{domain}.mo"


def run(command: str, imports: dict[str, str] | None = None) -> int:
    """Run ``check``, ``update``, ``compile`` or ``merge`` over both catalogs; the exit status."""
    failures: list[str] = []
    for package, domain in CATALOGS.items():
        po, mo = _paths(package, domain)
        used, problems = extract(ROOT / package)
        failures += problems
        known = read_po(po)
        if command in ("update", "merge"):
            given = imports or {}
            merged = {
                m: Entry(
                    m,
                    given.get(m) or (known[m].msgstr if m in known else ""),
                    e.plural,
                    where=e.where,
                )
                for m, e in used.items()
            }
            write_po(po, domain, merged)
            known = merged
        if command in ("update", "compile", "merge"):
            mo.write_bytes(compile_mo(read_po(po)))
            continue
        missing = [m for m in used if not (known.get(m) and known[m].msgstr)]
        failures += [
            f"{po.relative_to(ROOT)}: no Japanese for {m!r} ({used[m].where})" for m in missing
        ]
        gone = [m for m in known if m and m not in used]
        failures += [f"{po.relative_to(ROOT)}: {m!r} is no longer used" for m in gone]
        if not mo.exists() or mo.read_bytes() != compile_mo(known):
            failures.append(f"{mo.relative_to(ROOT)}: stale; run 'python tools/i18n.py compile'")
    for line in failures:
        print(line, file=sys.stderr)
    if command == "check" and not failures:
        print("i18n: every message has Japanese; catalogs compiled")
    return 1 if failures else 0


def _imports(files: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name in files:
        data = json.loads(Path(name).read_text(encoding="utf-8"))
        found.update({str(k): str(v) for k, v in data.items() if v})
    return found


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("check", "update", "compile", "merge"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(run(sys.argv[1], _imports(sys.argv[2:]) if sys.argv[1] == "merge" else None))
