"""Per-batch passphrases that survive being printed on paper and typed back.

A passphrase is :data:`DATA_GROUPS` groups of :data:`GROUP_LEN` characters from
Crockford's base32 alphabet (no I, L, O, U) followed by one check group, joined
with hyphens, e.g. ``7F3K-Q2AB-…-XM4D``. The data groups carry
``DATA_GROUPS * GROUP_LEN * 5`` = 140 random bits. The check group makes the
whole a Reed-Solomon code word over GF(2^10), each symbol a pair of characters:
its minimum distance of 3 symbols means that every single wrong character and
every swap of two neighbouring characters is detected — not just most of them —
so a mistyped passphrase is reported as a typo before any scrypt work. The
canonical (printed) form is exactly what is fed to scrypt, so the reference
``age`` tool opens a batch when the paper is typed as printed.
"""

import secrets as _secrets

from envelope.errors import PassphraseError

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
GROUP_LEN = 4
DATA_GROUPS = 7
SEPARATOR = "-"
ENTROPY_BITS = DATA_GROUPS * GROUP_LEN * 5

# Characters people confuse when reading or typing, mapped as Crockford does.
_CONFUSABLES = str.maketrans({"O": "0", "I": "1", "L": "1"})
_IGNORED = " \t-_\u3000\u30fc\uff0d"


def generate() -> str:
    """Return a fresh passphrase in its canonical printed form.

    Returns:
        ``DATA_GROUPS`` random groups plus the check group, hyphen-separated.
    """
    data = "".join(_secrets.choice(ALPHABET) for _ in range(DATA_GROUPS * GROUP_LEN))
    return _format(data + _check(data))


def normalize(typed: str) -> str:
    """Turn a passphrase as a person typed it into the canonical form.

    Case, spaces, hyphens (ASCII or full-width) and the look-alikes O/I/L are
    forgiven; a wrong character anywhere is caught by the check group.

    Args:
        typed: the text read from a prompt or file descriptor.

    Returns:
        The canonical passphrase, as printed on the notice.

    Raises:
        PassphraseError: wrong length, a character outside the alphabet, or a
            check group that does not match (a typo). The message never
            repeats the input.
    """
    chars = "".join(c for c in typed.strip() if c not in _IGNORED)
    chars = _to_ascii(chars)
    if not chars.isascii():
        raise PassphraseError("the passphrase contains characters not on the notice")
    chars = chars.upper().translate(_CONFUSABLES)
    expected = (DATA_GROUPS + 1) * GROUP_LEN
    if len(chars) != expected:
        raise PassphraseError(
            f"the passphrase has {len(chars)} characters, expected {expected} "
            f"({DATA_GROUPS + 1} groups of {GROUP_LEN})"
        )
    bad = sorted({c for c in chars if c not in ALPHABET})
    if bad:
        raise PassphraseError(f"the passphrase contains {len(bad)} character(s) not on the notice")
    data, check = chars[:-GROUP_LEN], chars[-GROUP_LEN:]
    if not _secrets.compare_digest(check.encode(), _check(data).encode()):
        raise PassphraseError("the passphrase does not match its check group: a typo?")
    return _format(chars)


def _to_ascii(text: str) -> str:
    """Fold full-width ASCII (typed with a Japanese IME) to half-width."""
    return "".join(chr(ord(c) - 0xFEE0) if "\uff01" <= c <= "\uff5e" else c for c in text)


# Reed-Solomon over GF(2^10) = GF(2)[x] / (x^10 + x^3 + 1), a primitive polynomial:
# symbols are pairs of base32 characters; two check symbols (= one check group).
_GF_BITS = 10
_GF_SIZE = 1 << _GF_BITS
_GF_POLY = 0b100_0000_1001
_EXP = [0] * (2 * _GF_SIZE)
_LOG = [0] * _GF_SIZE
_value = 1
for _power in range(_GF_SIZE - 1):
    _EXP[_power] = _EXP[_power + _GF_SIZE - 1] = _value
    _LOG[_value] = _power
    _value <<= 1
    if _value & _GF_SIZE:
        _value ^= _GF_POLY


def _mul(a: int, b: int) -> int:
    """Multiply in GF(2^10)."""
    return 0 if a == 0 or b == 0 else _EXP[_LOG[a] + _LOG[b]]


# g(x) = (x - a)(x - a^2) = x^2 + (a + a^2) x + a^3, with a = x the primitive element.
_G1 = _EXP[1] ^ _EXP[2]
_G0 = _EXP[3]


def _symbols(chars: str) -> list[int]:
    """Pairs of base32 characters as GF(2^10) symbols."""
    values = [ALPHABET.index(c) for c in chars]
    return [values[i] << 5 | values[i + 1] for i in range(0, len(values), 2)]


def _check(data: str) -> str:
    """Return the check group: the remainder of data(x) * x^2 divided by g(x)."""
    r1 = r0 = 0
    for symbol in _symbols(data):
        feedback = symbol ^ r1
        r1 = r0 ^ _mul(feedback, _G1)
        r0 = _mul(feedback, _G0)
    return "".join(ALPHABET[(s >> shift) & 31] for s in (r1, r0) for shift in (5, 0))


def _format(chars: str) -> str:
    """Join characters into hyphen-separated groups."""
    return SEPARATOR.join(chars[i : i + GROUP_LEN] for i in range(0, len(chars), GROUP_LEN))
