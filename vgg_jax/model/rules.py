"""Rules for values: a test and what the value must be, in words. A VGG checks its own fields
with MODEL_RULES, and a training config (vgg_jax.training.sections) checks the same fields with
these same rules, so each range is written once."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class Rule:
    """`test(value)` is true for a value that can work; `expected` says what that is, after
    "must" ("be a positive integer")."""

    test: Callable[[Any], bool]
    expected: str
    separator: str = ","  # before "got": choices end in a list, hence a semicolon

    def problem(self, name: str, value: Any) -> str | None:
        """None if `value` passes; otherwise one sentence naming `name`, the rule and value."""
        try:
            valid = bool(self.test(value))
        except TypeError:  # a value of the wrong type for the comparison
            valid = False
        return None if valid else f"{name} must {self.expected}{self.separator} got {value!r}."


def at_least(least: int, expected: str) -> Rule:
    """An integer of at least `least`."""
    return Rule(lambda value: is_integer(value) and value >= least, f"be {expected}")


def one_of(choices) -> Rule:
    choices = tuple(choices)
    return Rule(lambda value: value in choices, f"be one of {', '.join(choices)}", ";")


POSITIVE_INTEGER = at_least(1, "a positive integer")
FRACTION_BELOW_ONE = Rule(lambda value: is_number(value) and 0 <= value < 1, "be in [0, 1)")

# The fields of vgg_jax.VGG that take a range (the configuration name and the initialisation
# scheme are looked up by name, with their own messages).
MODEL_RULES = {
    "num_classes": POSITIVE_INTEGER,
    "fc_features": POSITIVE_INTEGER,
    "in_channels": POSITIVE_INTEGER,
    "dropout_rate": FRACTION_BELOW_ONE,
    "width": Rule(lambda value: is_number(value) and value > 0, "be a positive multiplier"),
}


def first_problem(values: dict, rules: dict[str, Rule], prefix: str = "") -> str | None:
    """The first of `rules` that its value in `values` breaks, in words; None if none."""
    for field, rule in rules.items():
        problem = rule.problem(f"{prefix}{field}", values[field])
        if problem is not None:
            return problem
    return None
