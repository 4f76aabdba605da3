"""Stateless request features, computed in-process from one request in well under a millisecond.

One implementation, used by the policies, the replay, serving and (later) Feast's on-demand feature
view. Every value is a float scaled to roughly [0, 1] (or [-1, 1] for hashed words) so that linear
learners need no further normalisation. Only the first ``MAX_SCAN_CHARS`` characters are scanned
for patterns, so a huge prompt costs no more than a long one; lengths use the whole text.

Examples
--------
>>> f = request_features("How do I reverse a list in Python? ```xs[::-1]```", task_hints=["code"])
>>> f["bias"], f["q_wh"], f["hint_code"], f["code"] > 0
(1.0, 1.0, 1.0, True)
>>> estimate_tokens("a" * 400)
100
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Mapping, Sequence

from llmopt.embeddings import get_embedder
from llmopt.tasks import KNOWN_HINTS, clean_hints

MAX_SCAN_CHARS = 2000
"""Characters scanned for markers and hashed words (lengths always use the full text)."""

N_HASH_BUCKETS = 16
"""Default number of signed hashed-word buckets."""

N_CLIENT_BUCKETS = 16
"""Signed hashed buckets of the client's own features (``cf_0`` .. ``cf_15``)."""

N_PREFIX_BUCKETS = 8
"""One-hot buckets of the prompt's opening (its template or instruction, see prefix_bucket)."""

PREFIX_CHARS = 48
"""Characters of the prompt's opening that identify its template."""

STRUCTURE_FEATURES: tuple[str, ...] = (
    "choices",
    "code",
    "digits",
    "math",
    "lang_en",
    "n_lines",
    "len_chars",
    "len_words",
    "len_tokens",
    "q_wh",
    "q_yesno",
    "q_imperative",
    "q_mark",
    "script_latin",
    "script_cyrillic",
    "script_cjk",
    "script_arabic",
    "script_other",
)
"""The request's structural markers, each in [0, 1]: answer choices, code, maths, language,
script, length, question type. Beside the prompt embedding they say *what kind* of request it
is (a maths word problem and a history question can share words, not digits and operators);
the clustering policy places its cells on the embedding and these together
(``models.cluster_thompson``)."""

_WORD = re.compile(r"[^\W\d_]{2,}", re.UNICODE)
# Patterns are kept to symbols (C-speed scans); keywords are looked up in the word set instead of
# by case-insensitive regex alternations, which were 10x slower on long prompts.
_CODE_SYMBOLS = ("```", "=>", "{", "}", ";\n", "#include", "()")
_CODE_WORDS = frozenset(
    "def class import function return python javascript java sql regex compile bug code "
    "variable array loop script html css api json".split()
)
_MATH_SYMBOLS = re.compile(r"\d\s*[-+*/^=<>]\s*\d|\\(?:frac|sum|int|sqrt)|[∑∫√π≤≥±]")
_MATH_WORDS = frozenset(
    "solve equation calculate probability integral derivative sum compute theorem prove".split()
)
_CHOICES = re.compile(r"^\(?[A-Da-d][).:] ", re.MULTILINE)
_CHOICE_WORDS = ("answer:", "options:", "option:", "choices:")
_DIGIT = re.compile(r"\d")
_LATIN_LETTER = re.compile(r"[A-Za-z\u00c0-\u024f]")
_CYRILLIC = re.compile(r"[\u0400-\u052f]")
_CJK = re.compile(r"[\u3040-\u9fff\uac00-\ud7af]")
_ARABIC = re.compile(r"[\u0600-\u06ff]")
_NON_LATIN = re.compile(r"[^\x00-\u024f]")
_WH = frozenset("what why how who when where which whose whom".split())
_YESNO = frozenset("is are can could does do did will would should was were has have".split())
_IMPERATIVE = frozenset(
    "write explain list summarize summarise translate give describe create generate make tell "
    "find compose draft rewrite classify extract compare suggest name provide design implement "
    "fix convert".split()
)
_EN_STOP = frozenset("the a an of to and in is it that for on with as this you are be".split())
_HINT_NAMES = tuple(f"hint_{hint}" for hint in KNOWN_HINTS)
_NO_HINTS = {**dict.fromkeys(_HINT_NAMES, 0.0), "hint_other": 0.0}
_NAMES: dict[tuple[str, int], tuple[str, ...]] = {}
WORD_HASH_CACHE_SIZE = 100_000
"""Distinct words whose CRC-32 :func:`hashed_words` keeps (cleared, not evicted, when full)."""
_WORD_HASHES: dict[str, int] = {}


def _names(prefix: str, n: int) -> tuple[str, ...]:
    """``prefix0`` .. ``prefix{n-1}``, built once per (prefix, n)."""
    names = _NAMES.get((prefix, n))
    if names is None:
        names = _NAMES[prefix, n] = tuple(f"{prefix}{i}" for i in range(n))
    return names


def estimate_tokens(text: str) -> int:
    """Rough token count (about four characters a token for English)."""
    return math.ceil(len(text) / 4)


def _log_scale(n: float, top: float) -> float:
    return min(math.log1p(n) / math.log1p(top), 1.0)


def _script_shares(sample: str) -> dict[str, float]:
    if not _NON_LATIN.search(sample):  # the common case: one C-level scan
        latin, cyrillic, cjk, arabic, other = float(bool(sample.strip())), 0, 0, 0, 0
    else:
        latin = len(_LATIN_LETTER.findall(sample))
        cyrillic = len(_CYRILLIC.findall(sample))
        cjk = len(_CJK.findall(sample))
        arabic = len(_ARABIC.findall(sample))
        letters = sum(ch.isalpha() for ch in _NON_LATIN.findall(sample))
        other = max(letters - cyrillic - cjk - arabic, 0)
    total = latin + cyrillic + cjk + arabic + other or 1
    return {
        "script_latin": latin / total,
        "script_cyrillic": cyrillic / total,
        "script_cjk": cjk / total,
        "script_arabic": arabic / total,
        "script_other": other / total,
    }


def _question_type(words: Sequence[str], text: str) -> dict[str, float]:
    first = words[0] if words else ""
    wh = first in _WH or any(w in _WH for w in words[:3])
    yesno = not wh and first in _YESNO
    imperative = not (wh or yesno) and first in _IMPERATIVE
    return {
        "q_wh": float(wh),
        "q_yesno": float(yesno),
        "q_imperative": float(imperative),
        "q_mark": float(text.rstrip().endswith("?")),
    }


def hashed_words(words: Sequence[str], n_buckets: int = N_HASH_BUCKETS) -> dict[str, float]:
    """Signed hashing trick over lower-cased words, L2-normalised (stable across processes)."""
    buckets = [0.0] * n_buckets
    hashes = _WORD_HASHES
    for w in words:
        h = hashes.get(w)
        if h is None:
            if len(hashes) >= WORD_HASH_CACHE_SIZE:
                hashes.clear()  # cheaper than LRU bookkeeping on every hit
            h = hashes[w] = zlib.crc32(w.encode())
        buckets[h % n_buckets] += 1.0 if (h >> 16) & 1 else -1.0
    norm = math.sqrt(sum(b * b for b in buckets)) or 1.0
    return dict(zip(_names("hw_", n_buckets), [b / norm for b in buckets], strict=True))


def prefix_bucket(text: str, n_buckets: int = N_PREFIX_BUCKETS) -> dict[str, float]:
    """One-hot hash bucket of the prompt's opening characters (case and spacing ignored).

    Requests from one application usually share a template ("Translate to French: ...", a
    fixed few-shot header, a system instruction): its opening identifies the task far better
    than the words of the variable part, so requests of a template share one bucket.

    >>> header = "You are a grader.  Answer with one letter only. "
    >>> prefix_bucket(header + "Q: 2+2?") == prefix_bucket(header.upper() + "Q: why?")
    True
    >>> sum(prefix_bucket("anything").values()), sum(prefix_bucket("").values())
    (1.0, 0.0)
    """
    names = _names("pfx_", n_buckets)
    out = dict.fromkeys(names, 0.0)
    if text:
        opening = " ".join(text[: PREFIX_CHARS * 2].lower().split())[:PREFIX_CHARS]
        out[names[zlib.crc32(opening.encode()) % n_buckets]] = 1.0
    return out


def request_features(
    prompt: str | None,
    *,
    task_hints: Sequence[str] = (),
    client_features: Mapping[str, float | str] | None = None,
    n_hash_buckets: int = N_HASH_BUCKETS,
    embeddings: bool = True,
) -> dict[str, float]:
    """Features of one request: lengths, script, code/math markers, question type, hints, words,
    and the prompt's embedding (``emb_0`` .. ``emb_31``, :mod:`llmopt.embeddings`; all zeros
    without a prompt; ``embeddings=False`` leaves them out).

    ``client_features`` are the request's own features, hashed (signed hashing trick, like
    Vowpal Wabbit's) into :data:`N_CLIENT_BUCKETS` buckets ``cf_<i>``: a number ``x`` named ``n``
    adds ``+-x`` to the bucket of ``n``; a string value adds ``+-1`` to the bucket of
    ``n=value``. Names are open-ended, the policies' dimension must not be: a client sending new
    names on every request would otherwise grow every linear model's matrices without bound.
    """
    text = prompt or ""
    sample = text[:MAX_SCAN_CHARS]
    low = sample.lower()
    words = _WORD.findall(low)
    wordset = set(words)
    n_words_est = len(words) * max(len(text) / max(len(sample), 1), 1.0)
    feats: dict[str, float] = {
        "bias": 1.0,
        "has_prompt": float(prompt is not None),
        "len_chars": _log_scale(len(text), 100_000),
        "len_words": _log_scale(n_words_est, 20_000),
        "len_tokens": _log_scale(estimate_tokens(text), 25_000),
        "n_lines": _log_scale(sample.count("\n"), 500),
        "digits": len(_DIGIT.findall(sample)) / (len(sample) or 1),
        "code": min((sum(map(sample.count, _CODE_SYMBOLS)) + len(wordset & _CODE_WORDS)) / 5, 1.0),
        "math": min((len(_MATH_SYMBOLS.findall(sample)) + len(wordset & _MATH_WORDS)) / 3.0, 1.0),
        "choices": min(
            (len(_CHOICES.findall(sample)) + sum(map(low.count, _CHOICE_WORDS))) / 4.0, 1.0
        ),
        "lang_en": sum(w in _EN_STOP for w in words) / (len(words) or 1) * 3.0,
    }
    feats["lang_en"] = min(feats["lang_en"], 1.0)
    feats.update(_script_shares(sample))
    feats.update(_question_type(words, sample))
    if task_hints:
        hints = set(clean_hints(task_hints))
        for hint, name in zip(KNOWN_HINTS, _HINT_NAMES, strict=True):
            feats[name] = float(hint in hints)
        feats["hint_other"] = float(not hints.issubset(KNOWN_HINTS))
    else:  # the common case: no hints, every hint feature 0
        feats.update(_NO_HINTS)
    feats.update(hashed_words(words, n_hash_buckets))
    feats.update(prefix_bucket(text))
    if client_features:
        feats.update(hashed_client_features(client_features))
    if embeddings:
        feats.update(get_embedder().features(text))
    return feats


def hashed_client_features(
    client_features: Mapping[str, float | str], n_buckets: int = N_CLIENT_BUCKETS
) -> dict[str, float]:
    """The client's features in ``n_buckets`` signed buckets (stable across processes).

    Only non-zero buckets are returned: requests without client features add nothing, and
    whatever the names, at most ``n_buckets`` features ever appear.

    >>> f = hashed_client_features({"tier": "gold", "load": 0.3})
    >>> sorted(round(abs(v), 2) for v in f.values())
    [0.3, 1.0]
    """
    buckets = [0.0] * n_buckets
    for name, value in client_features.items():
        if isinstance(value, str):
            key, x = f"{name}={value}", 1.0
        elif math.isfinite(value):
            key, x = name, float(value)
        else:
            continue
        h = zlib.crc32(key.encode())
        buckets[h % n_buckets] += x if (h >> 16) & 1 else -x
    return {f"cf_{i}": b for i, b in enumerate(buckets) if b}
