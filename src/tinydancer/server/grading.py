"""Grading an answer with a judge model, within a daily budget: the pieces ``tinydancer label``, the
gateway's judged samples and the LiteLLM logger's judged samples share.

- The rating form (:func:`judge_prompt`, a rubric file's instructions via :func:`load_rubric`) and
  its reading (:func:`parse_rating`): one form, so a grade means the same wherever it was given.
- :func:`prompt_token_bound`: what a grading call can cost at worst, before it is made.
- :class:`Budget`: dollars reserved at the worst case before a call and settled at its real cost.
- :class:`JudgeGate`: which answered calls are sampled (one seeded draw per call, so a replay of the
  same traffic draws the same way) and the UTC day's dollars: the first grading call that does not
  fit stops grading until the day changes.

Here, below the gateway and the integrations, because both sample live traffic for a judge and
neither may import the other (tests/test_layout.py).
"""

from __future__ import annotations

import asyncio
import random
import re
import time
import unicodedata
from pathlib import Path
from typing import Callable

from ..errors import ValidationError

__all__ = ["Budget", "JudgeGate", "JUDGE_INSTRUCTIONS", "RATING_FORM", "judge_prompt", "load_rubric", "parse_rating", "read_utf8",
           "prompt_token_bound"]

#: tokens a chat template may add around one user message (BOS, role markers, the reply's header)
TEMPLATE_TOKENS = 64

#: the default instructions of a rating; a rubric file (``--rubric``, the gateway's ``judge.rubric``)
#: replaces them, while the form the verdict must take (``RATING_FORM``) is always kept, or no reply could be read
JUDGE_INSTRUCTIONS = ("You are grading an AI assistant's answer to a user's question. Judge how helpful, correct, "
                      "relevant and complete the answer is. First explain your judgement in a few sentences.")
RATING_FORM = "Then give a rating from 1 (useless) to 10 (excellent) in exactly this form: Rating: [[n]]"

JUDGE_BODY = """

[Question]
{question}

[Answer]
{answer}
[End of answer]"""


JUDGE_PROMPT = JUDGE_INSTRUCTIONS + " " + RATING_FORM + JUDGE_BODY

def judge_prompt(question: str, answer: str, rubric: str | None = None) -> str:
    """The rating request for ``answer``: the rubric (or the default instructions), the form, the texts."""
    head = JUDGE_INSTRUCTIONS if rubric is None else rubric.strip()
    return head + " " + RATING_FORM + JUDGE_BODY.format(question=question, answer=answer)



def load_rubric(path: str | Path) -> str:
    """A rubric file's text (UTF-8, not empty): the grading instructions that replace the default ones."""
    path = Path(path)
    if not path.is_file():
        raise ValidationError(f"no rubric file at {path}")
    text = read_utf8(path).strip()
    if not text:
        raise ValidationError(f"the rubric {path} is empty; write the grading instructions in it")
    if len(text) > 20_000:
        raise ValidationError(f"the rubric {path} is {len(text)} characters; keep it under 20,000 (it is sent with "
                              "every grading call)")
    return text


_RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")

def parse_rating(text: str) -> float | None:
    """A judge's ``[[n]]`` (1-10) as a score in [0, 1]; None unless exactly one rating in range."""
    found = {float(v) for v in _RATING.findall(text)}
    if len(found) != 1:
        return None
    value = found.pop()
    return (value - 1.0) / 9.0 if 1.0 <= value <= 10.0 else None



def prompt_token_bound(text: str, extra_bytes: int = 0) -> int:
    """Prompt tokens one user message of ``text`` (plus ``extra_bytes`` not known yet) cannot exceed.

    Byte-level BPE (GPT's tiktoken, Llama 3) and SentencePiece with byte fallback (Llama 2, Mistral)
    give every token at least one byte of the text, and a tokenizer counting characters gives fewer
    (a character is 1 to 4 bytes), so the UTF-8 length bounds them all; SentencePiece's NFKC can
    lengthen text first (one ligature becomes up to 18 characters), so the longer of the two counts,
    plus ``TEMPLATE_TOKENS`` for the chat template.  Characters ÷ 4, the usual guess, is 4× low for
    CJK text counted per character.
    """
    raw = len(text.encode("utf-8", "surrogatepass"))
    nfkc = len(unicodedata.normalize("NFKC", text).encode("utf-8", "surrogatepass"))
    return max(raw, nfkc) + extra_bytes + TEMPLATE_TOKENS



def read_utf8(path: Path) -> str:
    """The file's text; invalid UTF-8 is an error naming its line (a traceback names nothing useful)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ValidationError(f"{path}:{line}: not UTF-8 (byte {data[exc.start]:#04x}); save the file as UTF-8") from None



class Budget:
    """A hard cap on dollars: worst cases are reserved before calls start, real costs settle them.

    Spent plus reserved never passes ``cap``.  A prompt reserves the worst case of its remaining
    calls in one piece (``open``); each call draws its own worst case from it (``draw``) and settles
    with its real cost (``settle``); what is left returns when the prompt ends (``close``).  Only
    the asyncio loop's thread touches it, and nothing awaits between a check and its reservation.
    """

    def __init__(self, cap: float | None) -> None:
        self.cap = cap
        self.spent = 0.0
        self.reserved = 0.0
        self.open_pots = 0
        self._freed = asyncio.Event()

    def fits(self, amount: float) -> bool:
        return self.cap is None or self.spent + self.reserved + amount <= self.cap

    async def open(self, amount: float) -> list[float] | None:
        """Reserve ``amount`` (a one-item list: what is left of it), waiting while running prompts may
        free room; None once nothing runs and it still does not fit (spending only grows)."""
        while not self.fits(amount):
            if self.open_pots == 0:
                return None
            await self._freed.wait()
        self.reserved += amount
        self.open_pots += 1
        return [amount]

    def draw(self, pot: list[float], amount: float) -> bool:
        """Hold ``amount`` for one call from ``pot``, topping the pot up if it falls short; False if that does not fit."""
        short = amount - pot[0]
        if short > 0:
            if not self.fits(short):
                return False
            self.reserved += short
            pot[0] += short
        pot[0] -= amount
        return True

    def settle(self, held: float, cost: float) -> None:
        """A call is over: its hold goes, its real cost (at most the hold) is spent."""
        self.reserved -= held
        self.spent += cost
        self._wake()

    def close(self, pot: list[float]) -> None:
        self.reserved -= pot[0]
        pot[0] = 0.0
        self.open_pots -= 1
        if self.open_pots == 0:
            self.reserved = 0.0  # nothing runs: no float residue may keep a waiting prompt from fitting
        self._wake()

    def _wake(self) -> None:
        freed, self._freed = self._freed, asyncio.Event()
        freed.set()


class JudgeGate:
    """The sampling draw and the day's dollars of a judge that grades live traffic.

    ``share``: the chance each answered routed call is taken; ``daily_dollars``: what grading may
    spend a UTC day; ``seed``: the draws' seed (None: fresh each start); ``clock``: seconds since
    the epoch (tests move it to the next day).  Touched by one thread (the gateway's event loop, or
    the LiteLLM judge's worker thread).
    """

    def __init__(self, share: float, daily_dollars: float, seed: int | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValidationError(f"sample_share is a share of answered calls, in [0, 1]; got {share}")
        if not daily_dollars >= 0.0:
            raise ValidationError(f"daily_dollars must be >= 0; got {daily_dollars}")
        self.share = float(share)
        self.daily_dollars = float(daily_dollars)
        self.rng = random.Random(seed)
        self.clock = clock
        self.day = self.today()
        self.budget = Budget(self.daily_dollars)
        #: the UTC day whose budget ran out (nothing is taken or graded until the day changes)
        self.stopped_day: int | None = None

    def today(self) -> int:
        return int(self.clock() // 86400)

    def roll_day(self) -> bool:
        """A new UTC day starts a fresh budget; True when it just did."""
        today = self.today()
        if today == self.day:
            return False
        self.day, self.budget, self.stopped_day = today, Budget(self.daily_dollars), None
        return True

    def draw(self) -> str | None:
        """One seeded draw per answered routed call (made even on a spent day, so replays stay
        aligned): ``"take"``, ``"budget"`` (drawn, but the day's dollars are spent) or None."""
        taken = self.rng.random() < self.share
        self.roll_day()
        if not taken:
            return None
        return "budget" if self.stopped_day is not None else "take"

    def reserve(self, worst: float) -> bool:
        """Hold a grading call's worst case from the day's dollars; False (and the day stopped) if it
        does not fit or the day is already stopped."""
        self.roll_day()
        if self.stopped_day is not None:
            return False
        if not self.budget.draw([0.0], worst):
            self.stopped_day = self.day
            return False
        return True

    def settle(self, worst: float, charge: float) -> None:
        """A grading call is over: its hold goes, its real cost is spent."""
        self.budget.settle(worst, charge)
