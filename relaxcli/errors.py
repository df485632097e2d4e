"""Errors that the ``relax`` command reports to users as one paragraph, without a traceback."""

from __future__ import annotations


class RelaxError(Exception):
    """A problem the user can fix; the CLI prints the message and exits with ``exit_code``."""

    exit_code: int = 1


class RecipeError(RelaxError):
    """The recipe (or a command-line override) is invalid. Carries every problem found, not just the first."""

    exit_code = 2

    def __init__(self, problems: list[str], source: str = "recipe") -> None:
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        n = len(self.problems)
        super().__init__(f"{source} has {n} problem{'s' if n != 1 else ''}:\n{lines}")


class EquivarianceError(RelaxError):
    """A model that must be equivariant is not, within the tolerance."""

    exit_code = 3


class TrustError(RelaxError):
    """A file asks to run code (a component outside the allowlist) that the user has not said to trust."""

    exit_code = 2
