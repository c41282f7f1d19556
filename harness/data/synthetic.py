"""A memorisable synthetic instruction task the harness generates itself, so a job needs no data files.

Made-up creatures each have one colour. Training teaches the facts; the ``synthetic_local`` evaluation
task asks the same questions as multiple choice over the colours, so fine-tuning visibly moves its score.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "black", "white")
_SYLLABLES = ("zor", "bla", "qui", "mex", "tal", "vor", "nim", "pra", "dug", "kel", "sho", "rin")


@dataclass(frozen=True)
class Fact:
    creature: str
    colour: str

    @property
    def question(self) -> str:
        return f"What colour is the {self.creature}?"


def synthetic_facts(num_facts: int = 32, seed: int = 0) -> list[Fact]:
    """``num_facts`` distinct creatures with their colours; the same seed always gives the same facts."""
    rng = random.Random(seed)
    names: list[str] = []
    while len(names) < num_facts:
        name = "".join(rng.choice(_SYLLABLES) for _ in range(3))
        if name not in names:
            names.append(name)
    return [Fact(name, rng.choice(COLOURS)) for name in names]


def synthetic_examples(num_examples: int, num_facts: int = 32, seed: int = 0) -> list[dict[str, str]]:
    """Instruction records (``instruction``/``input``/``output``) cycling through the facts."""
    facts = synthetic_facts(num_facts, seed)
    return [
        {"instruction": fact.question, "input": "", "output": fact.colour}
        for fact in (facts[i % len(facts)] for i in range(num_examples))
    ]
