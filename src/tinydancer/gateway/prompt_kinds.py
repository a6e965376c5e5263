"""Kinds of prompts, for stand-ins whose answers are good or bad by kind, and seeded traffic of them.

No real LLM is reachable here, so a run that shows a router learning from its traffic needs
stand-ins that differ the way real models do: a small model answers small talk, look-ups and
arithmetic well and proofs, code reviews and multi-step problems badly; a large one answers all
well.  This module gives each prompt a *kind* and makes traffic of them:

- :func:`generate` draws prompts of each kind from templates with many fillers (seeded, so a
  benchmark or a test replays it), each carrying its kind;
- :func:`classify` recovers the kind from the text alone, by the cues each kind's templates use.
  It is what the stand-ins call: the gateway and its router never see a kind, only the text.

The rules are honest only about text this module wrote: :func:`classify` of any other text is a
guess (small talk when no cue matches), which is all a stand-in needs.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["EASY_KINDS", "HARD_KINDS", "KINDS", "KindPrompt", "answer_key", "classify", "generate", "needs_strong"]

#: kinds a small model answers well ("weak suffices")
EASY_KINDS = ("small_talk", "lookup", "arithmetic")
#: kinds only a large model answers well ("needs strong")
HARD_KINDS = ("proof", "code_review", "multi_step")
KINDS = EASY_KINDS + HARD_KINDS


@dataclass(frozen=True)
class KindPrompt:
    text: str
    kind: str

    @property
    def needs_strong(self) -> bool:
        return self.kind in HARD_KINDS


def needs_strong(kind: str) -> bool:
    if kind not in KINDS:
        raise ValueError(f"unknown prompt kind {kind!r}; kinds are {', '.join(KINDS)}")
    return kind in HARD_KINDS


_NAMES = ["Ana", "Bo", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivo", "Jun", "Kemal", "Lena", "Mo", "Nia"]
_THINGS = ["apples", "tickets", "boxes", "litres of paint", "bus passes", "notebooks", "tiles", "sandwiches"]
_COUNTRIES = ["France", "Japan", "Kenya", "Peru", "Canada", "Norway", "Egypt", "Vietnam", "Chile", "Poland", "Ghana"]
_BOOKS = ["Hamlet", "Don Quixote", "War and Peace", "Pride and Prejudice", "One Hundred Years of Solitude", "Beloved",
          "The Odyssey", "Things Fall Apart", "Madame Bovary"]
_ELEMENTS = ["gold", "iron", "helium", "carbon", "sodium", "oxygen", "copper", "neon", "silver"]
_WORDS = ["ephemeral", "ubiquitous", "serendipity", "laconic", "gregarious", "pragmatic", "candid", "meticulous"]
_LANGS = ["Python", "Go", "Rust", "TypeScript", "Java"]
_THEOREMS = [
    "there are infinitely many primes", "the square root of 2 is irrational",
    "every finite group of prime order is cyclic", "the sum of the first n odd numbers is n squared",
    "a continuous function on a closed interval attains its maximum", "the Cauchy-Schwarz inequality holds in R^n",
    "every tree with n vertices has n - 1 edges", "the harmonic series diverges",
    "there is no largest even number", "the product of two odd integers is odd",
    "a bipartite graph has no odd cycle", "log base 2 of 3 is irrational",
]
_SNIPPETS = [
    "def mean(xs):\n    return sum(xs) / len(xs)",
    "for i in range(len(items)):\n    if items[i] == target:\n        items.remove(items[i])",
    "def load(path):\n    f = open(path)\n    return json.load(f)",
    "cache = {}\ndef fib(n):\n    if n < 2: return n\n    cache[n] = fib(n-1) + fib(n-2)\n    return cache[n]",
    "query = \"SELECT * FROM users WHERE name = '\" + name + \"'\"",
    "while True:\n    line = sock.recv(1024)\n    buf += line",
    "if user.is_admin == 'true':\n    grant(user)",
    "func sum(xs []int) (t int) {\n  for i := 0; i <= len(xs); i++ { t += xs[i] }\n  return\n}",
]

_SMALL_TALK = [
    "Thanks!", "Thank you so much, that helped.", "Hi, how are you today?", "Good morning!", "Tell me a joke.",
    "What's up?", "Have a nice weekend!", "Hello there.", "You're great, thanks for the help.", "Can you say hi to {name}?",
    "I'm bored, cheer me up.", "Good night!", "How's your day going?", "Nice to meet you, I'm {name}.",
    "Tell me something fun about {thing}.", "Hey, quick hello from {name}!",
]
_LOOKUP = [
    "What is the capital of {country}?", "Who wrote {book}?", "What is the chemical symbol for {element}?",
    "What does the word '{word}' mean?", "Define '{word}' in one sentence.", "What currency is used in {country}?",
    "Which continent is {country} in?", "When was {book} first published?", "What is the atomic number of {element}?",
    "Who is the author of {book}?", "What language is spoken in {country}?", "Give me a synonym for '{word}'.",
]
_ARITHMETIC = [
    "What is {a} + {b}?", "What is {a} * {c}?", "Compute {a} - {b}.", "What is {a} times {c}?", "Calculate {a} / {c}.",
    "What's {c} squared?", "What is {p}% of {a}?", "Add {a} and {b}.", "Multiply {a} by {c}.", "What is {a} plus {b}?",
]
_PROOF = [
    "Prove that {thm}.", "Give a rigorous proof that {thm}.", "Show that {thm}, step by careful step, as a proof.",
    "Can you prove that {thm}?", "Write a formal proof: {thm}.", "Demonstrate rigorously that {thm}.",
    "I need a proof that {thm}. Please be rigorous.",
]
_CODE_REVIEW = [
    "Review this {lang} code and point out the bugs:\n```\n{code}\n```",
    "Can you do a code review of this snippet?\n```\n{code}\n```",
    "What is wrong with this code? Review it for correctness and security.\n```\n{code}\n```",
    "Please review my pull request; the change is:\n```\n{code}\n```",
    "Code review request ({lang}): is this safe and correct?\n```\n{code}\n```",
]
_MULTI_STEP = [
    "{name} buys {a} {thing} at ${c} each and sells them at ${d} each, but {p}% are damaged and cannot be sold. "
    "How much profit does {name} make? Work it out step by step.",
    "A train leaves at {h}:00 going {a} km/h; a second leaves {c} hours later going {b} km/h on the same track. "
    "When and where does the second catch up? Explain each step.",
    "Plan a {c}-day trip for {name} with a budget of ${a}: flights cost ${b}, hotels ${d} a night. "
    "Break it down step by step and say what is left.",
    "{name} has {a} {thing}, gives a third to a friend, buys {b} more, then splits them among {c} people. "
    "How many does each get and how many are left? Solve it in steps.",
    "A tank holds {a} litres; pipe A fills it in {c} hours and pipe B empties it in {d} hours. "
    "If both are open, how long until it is full? Show the multi-step reasoning.",
    "Design a step-by-step migration plan to move a {lang} service with {a} users to a new database without downtime.",
]

_TEMPLATES = {"small_talk": _SMALL_TALK, "lookup": _LOOKUP, "arithmetic": _ARITHMETIC, "proof": _PROOF,
              "code_review": _CODE_REVIEW, "multi_step": _MULTI_STEP}
_OPENERS = ["", "", "", "Quick question: ", "Hey, ", "Please help: ", "Hi! "]
_CLOSERS = ["", "", "", " Please be brief.", " Keep it short.", " I'd appreciate a clear answer."]

# the cues of each kind, tried in this order (the first that matches wins)
_CUES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("code_review", re.compile(r"```|\bcode review\b|\breview (this|my)\b", re.I)),
    ("proof", re.compile(r"\bprove\b|\bproof\b|\bdemonstrate rigorously\b", re.I)),
    ("multi_step", re.compile(r"\bstep[ -]by[ -]step\b|\bin steps\b|\beach step\b|\bmulti-step\b", re.I)),
    ("arithmetic", re.compile(r"\d+\s*(?:[-+*/]|plus|times|squared|%)|\b(?:add|multiply|compute|calculate)\s+\d", re.I)),
    ("lookup", re.compile(r"\b(?:capital|who wrote|author of|chemical symbol|atomic number|currency|continent|"
                          r"language is spoken|synonym|define|first published)\b|\bmean\?", re.I)),
)


def classify(text: str) -> str:
    """The kind of a prompt from its text (small talk when no other kind's cue matches)."""
    for kind, cue in _CUES:
        if cue.search(text):
            return kind
    return "small_talk"


def _fill(template: str, rng: np.random.Generator) -> str:
    a, b = int(rng.integers(12, 999)), int(rng.integers(3, 400))
    values = {"name": rng.choice(_NAMES), "thing": rng.choice(_THINGS), "country": rng.choice(_COUNTRIES),
              "book": rng.choice(_BOOKS), "element": rng.choice(_ELEMENTS), "word": rng.choice(_WORDS),
              "lang": rng.choice(_LANGS), "thm": rng.choice(_THEOREMS), "code": rng.choice(_SNIPPETS),
              "a": a, "b": b, "c": int(rng.integers(2, 25)), "d": int(rng.integers(26, 90)),
              "p": int(rng.choice([5, 10, 15, 20, 25, 40])), "h": int(rng.integers(6, 20))}
    return template.format(**values)


def prompt_of_kind(kind: str, rng: np.random.Generator) -> str:
    """One prompt of ``kind``: a template of that kind, its slots filled, an opener and closer sometimes."""
    templates = _TEMPLATES[kind]
    body = _fill(templates[int(rng.integers(len(templates)))], rng)
    return f"{_OPENERS[int(rng.integers(len(_OPENERS)))]}{body}{_CLOSERS[int(rng.integers(len(_CLOSERS)))]}"


def generate(n: int, seed: int = 0, hard_share: float = 0.3, kinds: Sequence[str] | None = None) -> list[KindPrompt]:
    """``n`` prompts, a ``hard_share`` of them of a "needs strong" kind, kinds equally likely within
    each group (or, with ``kinds``, drawn evenly from those); the same ``seed`` gives the same prompts."""
    if not 0.0 <= hard_share <= 1.0:
        raise ValueError("hard_share must be in [0, 1]")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        if kinds is not None:
            kind = str(kinds[int(rng.integers(len(kinds)))])
        else:
            group = HARD_KINDS if rng.random() < hard_share else EASY_KINDS
            kind = group[int(rng.integers(len(group)))]
        out.append(KindPrompt(prompt_of_kind(kind, rng), kind))
    return out


def answer_key(question: str) -> str:
    """The token a correct answer to ``question`` carries (a stand-in's "right answer"): the stand-in
    judge checks for it, as a grader checks a reference answer."""
    return hashlib.sha256(" ".join(question.split()).encode("utf-8", "surrogatepass")).hexdigest()[:10]


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m tinydancer.gateway.prompt_kinds --n 90 --seed 0 --out sample.jsonl``: seeded traffic
    as JSONL (``prompt`` and ``kind``; ``tinydancer label`` reads the prompt and ignores the kind)."""
    import argparse
    import json
    from pathlib import Path

    from .._io import atomic_write_text

    ap = argparse.ArgumentParser(description="Seeded prompts of six kinds, for kind-aware stand-ins.")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hard-share", type=float, default=0.3, help="the share of needs-strong kinds")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    rows = generate(args.n, args.seed, args.hard_share)
    atomic_write_text(args.out, "".join(json.dumps({"prompt": p.text, "kind": p.kind}) + "\n" for p in rows))


if __name__ == "__main__":
    main()
