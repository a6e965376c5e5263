"""Bounded exploration: a small share of routed calls goes to a model the router did not pick.

Feedback only arrives for the model a call went to.  A gateway that always follows its router
never learns what the other model would have done on the prompts the router is wrong about, so
retraining cannot correct it.  With ``exploration: {share: ε}``, each routed call, with
probability ε, goes to one of the *eligible* other models, drawn uniformly; the probability of
the model the call went to under this logging policy (its *propensity*) is logged with the
decision, which is what inverse-propensity and doubly robust estimates need
(:mod:`tinydancer.server.offpolicy`):

- the router's pick: ``1 - ε`` (``1`` when no other model is eligible);
- an explored model: ``ε / k`` for ``k`` eligible others.

Eligible: allowed for this call (``tinydancer.models``, ``max_cost``: those filters ran first),
played by an upstream, and whose circuit breaker is not open.  Never explored: a call that names
an upstream (it is not routed), and a call of an ``x-session-id`` that already has a model (a
session keeps its model; its first call may explore, and the session then stays there).

The draws come from one ``random.Random(seed)``, two per explorable call, so the same calls in
the same order make the same choices (a test, or an incident, can replay them).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Exploration", "Explorer"]


@dataclass(frozen=True)
class Exploration:
    """One call's draw: the model index it goes to first, its propensity, and whether it explored."""

    model: int
    propensity: float
    explored: bool


class Explorer:
    def __init__(self, share: float, seed: int | None = None) -> None:
        self.share = float(share)
        self.rng = random.Random(seed)

    @property
    def active(self) -> bool:
        return self.share > 0.0

    def draw(self, choice: int, eligible: list[int]) -> Exploration:
        """Where a routed call goes: the router's ``choice`` or, with probability ``share``, one of
        the ``eligible`` others (indices of the router's models, in the router's order)."""
        explore, pick = self.rng.random(), self.rng.random()  # always two: replays stay aligned
        others = [i for i in eligible if i != choice]
        if not others:
            return Exploration(choice, 1.0, False)
        if explore < self.share:
            return Exploration(others[int(pick * len(others))], self.share / len(others), True)
        return Exploration(choice, 1.0 - self.share, False)
