"""Cheap, readable signals of a prompt's difficulty and kind, offered to a router beside its
embedding (issue 30, item 2).

Why: a mean-pooled sentence embedding says what a prompt is *about*, and little about how hard it
is to answer — how long it is, whether it carries code or math notation, whether it asks a
question or gives a task, how many steps or constraints it sets, which script it is written in.
These are what tend to carry across domains (a proof request is hard whether it is about primes
or graphs), they cost a few regular expressions (10-30 µs, ``benchmarks/prompt_features.py``),
and each one can be read by a person.

Each feature lies in [0, 1] (counts on a log scale, capped).  The set is versioned: its id
(:data:`FEATURES_ID`) travels in a router's embedder id as ``<embedder id>+<features id>``, and
a router trained with one set refuses vectors made without it or with another (naming both).
A router only carries the set when cross-validation on its own training table prefers it
(:func:`tinydancer.llm.router_fit.fit`, ``QueryRouterConfig.feature_sets``).

A prompt is text only: a conversation's turn count is not in this set (the gateway routes the
text it is given; :mod:`tinydancer.gateway` decides what that text is).
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Sequence

import numpy as np

from .embedder_inputs import check_texts

__all__ = ["FEATURES_ID", "FEATURE_NAMES", "FeaturedEmbedder", "describe_inputs", "prompt_features", "split_id",
           "with_features"]

#: bump when any feature, its scaling or its order changes: it is part of a router's embedder id
FEATURES_ID = "prompt-features-v1"
#: the feature block's share of the vector before the whole is L2-normalized again
FEATURE_WEIGHT = 0.5
#: regular expressions read at most this many characters (the cost stays bounded on long prompts)
SCAN_CHARS = 1500

_CODE = re.compile(r"```|^\s*(def|class|import|from|#include|public|fn|function|let|const|var)\b|[{};]\s*$|=>|::|\w\(\)",
                   re.MULTILINE)
_MATH = re.compile(r"\$[^$]+\$|\\(frac|sqrt|sum|int|cdot|times|le|ge|pi)\b|\d\s*[-+*/^=<>]\s*\d|\b[a-z]\s*\^\s*\d|[∑∫√≤≥π∞]")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
# the word patterns below read the lower-cased text (one C-speed pass) rather than ignore case
_QUESTION_START = re.compile(r"^\s*(who|what|when|where|which|why|how|is|are|can|could|do|does|did|should|would|will)\b")
_TASK_START = re.compile(r"^\s*(write|implement|create|build|design|explain|describe|prove|derive|solve|compute|"
                         r"calculate|find|show|list|give|generate|summari[sz]e|translate|rewrite|compare|analy[sz]e)\b")
_STEPS = re.compile(r"^\s*(?:[-*•]|\d+[.)]|[a-z][.)])\s+|\b(?:must|should|at least|at most|exactly|no more than|"
                    r"without|step|steps|first|then|finally|also|each|every|ensure|include)\b",
                    re.MULTILINE)
_CHOICES = re.compile(r"(?:^|\n)\s*\(?[A-D][.):]\s", re.MULTILINE)
_REASONING = re.compile(r"\b(prove|proof|derive|why|explain|justify|reason|step[- ]by[- ]step|complexity|optimi[sz]e|"
                        r"algorithm|theorem|lemma)\b")

_LETTER = re.compile(r"[^\W\d_]")
#: letters outside Latin (basic, Latin-1, Extended-A/B): Cyrillic, Greek, CJK, Arabic, ...
_NON_LATIN = re.compile(r"[^\W\d_\u0000-\u024F]")

FEATURE_NAMES = ("length (log words)", "code notation", "math notation", "numbers (log count)", "question form",
                 "task form", "steps and constraints (log count)", "multiple choice", "reasoning words",
                 "non-Latin script share", "lines (log count)")


def _log_scaled(count: int, cap: float) -> float:
    """log(1 + count) / log(1 + cap), capped at 1."""
    return min(1.0, math.log1p(count) / math.log1p(cap))


#: Necessary conditions, each cheaper than the pattern it guards: substring tests, or a pattern
#: whose every alternative starts with a literal or a set (the regex engine then skips to the next
#: candidate character, where the patterns above, led by ``^`` or ``\b``, try every position).
#: When a hint finds nothing its pattern cannot match and its count is 0; when it finds something
#: the pattern itself runs, so every value is exactly the pattern's (tests/test_prompt_features.py
#: pins them against the plain findall).  MMLU's prompts: 68 -> 28 µs each (benchmarks/RESULTS.md).
_CODE_HINT = re.compile(r"`|\{|\}|;|=>|::|\(\)")
_CODE_WORDS = ("def", "class", "import", "from", "#include", "public", "fn", "function", "let", "const", "var")
_MATH_SYMBOL = re.compile(r"[$\\^∑∫√≤≥π∞]")
_DIGIT_OP = re.compile(r"\d\s*[-+*/=<>]\s*\d")
#: a substring of every word ``_STEPS`` / ``_REASONING`` count (``in`` is faster than a scan here)
_STEPS_WORDS = ("must", "should", "at least", "at most", "exactly", "no more than", "without", "step", "first", "then",
                "finally", "also", "each", "every", "ensure", "include")
_LIST_MARK = re.compile(r"^\s*(?:[-*•]|\d+[.)]|[a-z][.)])\s+", re.MULTILINE)
_REASONING_WORDS = ("prove", "proof", "derive", "why", "explain", "justify", "reason", "step", "complexity", "optimi",
                    "algorithm", "theorem", "lemma")


def _code_count(head: str) -> int:
    """``len(_CODE.findall(head))``, without the scan when no code notation can be there: every
    match holds a symbol of ``_CODE_HINT`` or starts a line (after white space) with a keyword."""
    if _CODE_HINT.search(head) is None and not any(line.lstrip().startswith(_CODE_WORDS) for line in head.split("\n")):
        return 0
    return len(_CODE.findall(head))


def _one(text: str) -> list[float]:
    head = text[:SCAN_CHARS]
    words = len(text.split()) if len(text) <= 4 * SCAN_CHARS else len(text) // 6
    # most prompts are ASCII: no letter outside Latin, and no scan for one
    non_latin = 0.0 if head.isascii() else len(_NON_LATIN.findall(head)) / (len(_LETTER.findall(head)) or 1)
    stripped = head.rstrip()
    low = head.lower()
    math = len(_MATH.findall(head)) if _MATH_SYMBOL.search(head) or _DIGIT_OP.search(head) else 0
    # without a step or constraint word, only the list markers can match
    steps = len(_STEPS.findall(low)) if any(w in low for w in _STEPS_WORDS) else len(_LIST_MARK.findall(low))
    reasoning = len(_REASONING.findall(low)) if any(w in low for w in _REASONING_WORDS) else 0
    return [
        _log_scaled(words, 1000),
        _log_scaled(_code_count(head), 10),
        _log_scaled(math, 10),
        _log_scaled(len(_NUMBER.findall(head)), 20),
        1.0 if stripped.endswith("?") or _QUESTION_START.match(low) else 0.0,
        1.0 if _TASK_START.match(low) else 0.0,
        _log_scaled(steps, 20),
        1.0 if len(_CHOICES.findall(head)) >= 2 else 0.0,
        _log_scaled(reasoning, 5),
        non_latin,
        _log_scaled(head.count("\n"), 50),
    ]


def prompt_features(texts: Sequence[str]) -> np.ndarray:
    """(N, len(FEATURE_NAMES)) float32 in [0, 1], one row per text."""
    texts = check_texts(texts)
    out = np.zeros((len(texts), len(FEATURE_NAMES)), dtype=np.float32)
    for i, text in enumerate(texts):
        out[i] = _one(text)
    return out


def with_features(embeddings: np.ndarray, texts: Sequence[str]) -> np.ndarray:
    """The embeddings with the feature block appended (weighted), each row L2-normalized again so
    that cosine neighbours and the router's input scale stay as they were."""
    feats = prompt_features(texts) * FEATURE_WEIGHT
    x = np.hstack([np.asarray(embeddings, dtype=np.float32), feats])
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def split_id(embedder_id: str) -> tuple[str, str | None]:
    """(the embedder's own id, the feature set's id or None) of a router's embedder id."""
    base, sep, feats = embedder_id.partition("+")
    return base, (feats if sep else None)


def describe_inputs(embedder_id: str) -> str:
    """What vectors an embedder id stands for, naming the embedder and the feature set (or none)."""
    base, features = split_id(embedder_id)
    return f"{base!r} embeddings " + (f"with prompt features {features!r}" if features else "without prompt features")


class FeaturedEmbedder:
    """An embedder whose vectors carry the prompt features after the embedding: to the rest of
    Tiny Dancer (training, the router file, the gateway) it is one more embedder, with the id
    ``<inner id>+prompt-features-v1``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    @property
    def id(self) -> str:
        return f"{self.inner.id}+{FEATURES_ID}"

    @property
    def dim(self) -> int:
        return int(self.inner.dim) + len(FEATURE_NAMES)

    @property
    def inline_chars(self) -> int:
        """The inner embedder's (see gateway/scoring.py): the features cost ~0.05 ms more."""
        return int(getattr(self.inner, "inline_chars", 0) or 0)

    def embed(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        texts = check_texts(texts)
        return with_features(self.inner.embed(texts, progress=progress), texts)
