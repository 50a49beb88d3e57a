"""Tests for envelope.passphrase: generation, normalization and typo detection."""

import random
import re
import secrets
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envelope import passphrase
from envelope.errors import EnvelopeError, PassphraseError

ALPHABET = passphrase.ALPHABET
DATA_LEN = passphrase.DATA_GROUPS * passphrase.GROUP_LEN
CANONICAL_RE = re.compile(rf"^[{ALPHABET}]{{4}}(?:-[{ALPHABET}]{{4}}){{7}}$")
SEED = 20260715


def _rng(seed: int) -> random.Random:
    """A seeded, reproducible generator for test data (never for real passphrases)."""
    return random.Random(seed)  # noqa: S311


def _sample(rng: random.Random) -> str:
    """A valid canonical passphrase drawn from ``rng`` (deterministic)."""
    data = "".join(rng.choice(ALPHABET) for _ in range(DATA_LEN))
    return passphrase._format(data + passphrase._check(data))


def _chars(canonical: str) -> str:
    return canonical.replace(passphrase.SEPARATOR, "")


def _rejects(chars: str) -> bool:
    try:
        passphrase.normalize(chars)
    except PassphraseError:
        return True
    return False


# A fixed sample, printed as it would be on the notice.
SAMPLE = _sample(_rng(SEED))


def test_entropy_is_at_least_128_bits() -> None:
    """The data groups carry at least 128 random bits (SPEC 4)."""
    assert passphrase.ENTROPY_BITS >= 128
    assert len(ALPHABET) == 32 and len(set(ALPHABET)) == 32
    assert DATA_LEN * 5 == passphrase.ENTROPY_BITS


def test_alphabet_is_crockford_without_ambiguous_letters() -> None:
    """The alphabet has no I, L, O or U (letters people misread)."""
    assert not set("ILOU") & set(ALPHABET)
    assert set(ALPHABET) <= set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def test_generate_matches_printed_form() -> None:
    """generate() returns 8 hyphen-separated groups of 4 alphabet characters."""
    for _ in range(50):
        assert CANONICAL_RE.fullmatch(passphrase.generate())


def test_generate_is_fresh_each_time() -> None:
    """Two hundred generated passphrases are all different."""
    assert len({passphrase.generate() for _ in range(200)}) == 200


def test_generate_passes_its_own_check() -> None:
    """A generated passphrase normalizes to itself (its check group matches)."""
    secret = passphrase.generate()
    assert passphrase.normalize(secret) == secret


def test_generate_uses_secrets_module() -> None:
    """generate() draws from the CSPRNG module, not random."""
    assert vars(passphrase)["_secrets"] is secrets


def test_passphrase_error_is_an_envelope_error() -> None:
    """PassphraseError is caught by the envelope package's base class."""
    with pytest.raises(EnvelopeError):
        passphrase.normalize("")


@pytest.mark.parametrize(
    "transform",
    [
        pytest.param(str.lower, id="lower-case"),
        pytest.param(lambda s: s.replace("-", " "), id="spaces"),
        pytest.param(lambda s: s.replace("-", ""), id="no-separators"),
        pytest.param(lambda s: "  " + s + "\n", id="surrounding-whitespace"),
        pytest.param(lambda s: s.replace("-", "\t"), id="tabs"),
        pytest.param(lambda s: s.replace("-", "_"), id="underscores"),
        pytest.param(lambda s: s.replace("-", "\u3000"), id="ideographic-space"),
        pytest.param(lambda s: s.replace("-", "\uff0d"), id="full-width-hyphen"),
        pytest.param(lambda s: s.replace("-", "\u30fc"), id="katakana-long-mark"),
        pytest.param(
            lambda s: "".join(chr(ord(c) + 0xFEE0) if c != "-" else "\u3000" for c in s),
            id="full-width-ime",
        ),
        pytest.param(
            lambda s: "".join(chr(ord(c) + 0xFEE0) for c in s.lower() if c != "-"),
            id="full-width-lower",
        ),
        pytest.param(lambda s: " ".join(s.replace("-", "")), id="space-between-every-char"),
    ],
)
def test_normalize_forgives_typing_variants(transform: object) -> None:
    """Case, spaces, hyphens and full-width forms all normalize to the printed form."""
    assert callable(transform)
    typed = transform(SAMPLE)
    assert typed != SAMPLE
    assert passphrase.normalize(typed) == SAMPLE


def test_normalize_full_width_example() -> None:
    """A passphrase typed in full width with ideographic spaces is accepted."""
    typed = "\u3000".join(
        "".join(chr(ord(c) + 0xFEE0) for c in group) for group in SAMPLE.split("-")
    )
    assert typed.startswith(chr(ord(SAMPLE[0]) + 0xFEE0))
    assert passphrase.normalize(typed) == SAMPLE


def test_normalize_maps_look_alikes() -> None:
    """O is read as 0 and I/L as 1, in either case, as Crockford does."""
    rng = _rng(SEED + 1)
    data = "01" * (DATA_LEN // 2)
    data = "".join(c if rng.random() < 0.5 else rng.choice(ALPHABET) for c in data)
    secret = passphrase._format(data + passphrase._check(data))
    typed = secret.replace("0", "O").replace("1", "I")
    assert typed != secret
    assert passphrase.normalize(typed) == secret
    assert passphrase.normalize(secret.replace("1", "l").replace("0", "o")) == secret
    assert passphrase.normalize(secret.replace("1", "L")) == secret


def test_every_check_group_substitution_is_detected() -> None:
    """Changing any character of the check group is always reported as a typo."""
    chars = _chars(SAMPLE)
    for pos in range(DATA_LEN, len(chars)):
        for c in ALPHABET:
            if c != chars[pos]:
                assert _rejects(chars[:pos] + c + chars[pos + 1 :]), (pos, c)


def test_every_data_substitution_of_the_sample_is_detected() -> None:
    """Every single-character substitution in the data groups of the sample is a typo."""
    chars = _chars(SAMPLE)
    missed = [
        (pos, c)
        for pos in range(DATA_LEN)
        for c in ALPHABET
        if c != chars[pos] and not _rejects(chars[:pos] + c + chars[pos + 1 :])
    ]
    assert missed == []


def test_every_single_substitution_is_detected() -> None:
    """Over 500 passphrases x 28 positions x 31 substitutions, every typo is detected.

    The check group makes a Reed-Solomon code word of minimum distance 3 over
    GF(2^10) symbols (character pairs), so detection is total, not probable.
    """
    rng = _rng(SEED)
    missed = total = 0
    for _ in range(500):
        data = "".join(rng.choice(ALPHABET) for _ in range(DATA_LEN))
        check = passphrase._check(data)
        for pos in range(DATA_LEN):
            for c in ALPHABET:
                if c == data[pos]:
                    continue
                total += 1
                if passphrase._check(data[:pos] + c + data[pos + 1 :]) == check:
                    missed += 1
    assert total == 500 * DATA_LEN * 31
    assert missed == 0


def test_every_adjacent_transposition_is_detected() -> None:
    """Swapping two adjacent different characters is always detected."""
    rng = _rng(SEED + 2)
    missed = total = 0
    for _ in range(2000):
        chars = _chars(_sample(rng))
        for pos in range(len(chars) - 1):
            if chars[pos] == chars[pos + 1]:
                continue
            total += 1
            swapped = chars[:pos] + chars[pos + 1] + chars[pos] + chars[pos + 2 :]
            if not _rejects(swapped):
                missed += 1
    assert total > 50_000
    assert missed == 0


def test_normalize_reports_a_typo() -> None:
    """A wrong character gives the check-group message, not a length message."""
    chars = _chars(SAMPLE)
    wrong = ("0" if chars[5] != "0" else "1").join([chars[:5], chars[6:]])
    with pytest.raises(PassphraseError, match="check group"):
        passphrase.normalize(wrong)


@pytest.mark.parametrize(
    "typed",
    [
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param(SAMPLE[:-1], id="one-short"),
        pytest.param(SAMPLE + "7", id="one-long"),
        pytest.param(SAMPLE[:-5], id="missing-group"),
        pytest.param(SAMPLE + "-" + SAMPLE[:4], id="extra-group"),
        pytest.param(SAMPLE + SAMPLE, id="doubled"),
    ],
)
def test_normalize_refuses_wrong_length(typed: str) -> None:
    """A passphrase with the wrong number of characters is refused."""
    with pytest.raises(PassphraseError, match="characters, expected 32") as info:
        passphrase.normalize(typed)
    if typed.strip():
        assert _chars(typed)[:8] not in str(info.value)


@pytest.mark.parametrize("bad", ["U", "!", "#", "é", "Я", "あ", "\x00", "\u00a0", "\n"])
def test_normalize_refuses_characters_outside_alphabet(bad: str) -> None:
    """A character that is not on the notice is refused, and not echoed."""
    chars = _chars(SAMPLE)
    typed = chars[:10] + bad + chars[11:]
    with pytest.raises(PassphraseError, match="not on the notice") as info:
        passphrase.normalize(typed)
    assert bad not in str(info.value)
    assert chars[:10] not in str(info.value)


@pytest.mark.parametrize(
    "typed",
    [
        pytest.param(lambda s: s[:-1] + ("0" if s[-1] != "0" else "1"), id="typo"),
        pytest.param(lambda s: s[:-1], id="short"),
        pytest.param(lambda s: s[:3] + "U" + s[4:], id="bad-char"),
    ],
)
def test_error_messages_never_contain_the_input(typed: object) -> None:
    """No PassphraseError message repeats any group of what was typed."""
    assert callable(typed)
    attempt = typed(SAMPLE)
    with pytest.raises(PassphraseError) as info:
        passphrase.normalize(attempt)
    message = str(info.value)
    for group in attempt.split("-"):
        assert group not in message
    assert attempt not in repr(info.value)


def test_check_is_deterministic_and_in_alphabet() -> None:
    """_check returns 4 alphabet characters and the same value for the same data."""
    data = "0" * DATA_LEN
    check = passphrase._check(data)
    assert len(check) == passphrase.GROUP_LEN
    assert set(check) <= set(ALPHABET)
    assert passphrase._check(data) == check


@settings(max_examples=200)
@given(st.randoms(use_true_random=False))
def test_normalize_of_generate_is_identity(rng: random.Random) -> None:
    """normalize(generate()) is the generated, printed form, however it is typed (property)."""
    with mock.patch.object(passphrase, "_secrets", rng):
        secret = passphrase.generate()
    assert CANONICAL_RE.fullmatch(secret)
    assert passphrase.normalize(secret) == secret
    assert passphrase.normalize(secret.lower().replace("-", " ")) == secret
