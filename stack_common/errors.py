"""One exception type for mistakes the user can fix, and the CLI wrapper that prints it."""
from __future__ import annotations

import functools
import sys
from typing import Callable

USER_ERROR_EXIT = 2


class UserError(Exception):
    """A problem with the user's input or config, printed as one line (no traceback).

    `file`, `record` and `field` say where; `expected` says what would have been right.
    """

    def __init__(self, problem: str, *, file=None, record=None, field=None, expected=None):
        self.problem = problem
        self.file = file
        self.record = record
        self.field = field
        self.expected = expected
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = []
        if self.file is not None:
            where.append(f"{self.file}")
        if self.record is not None:
            where.append(f"record {self.record}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        text = (": ".join([", ".join(where), self.problem]) if where else self.problem)
        if self.expected:
            text += f" (expected {self.expected})"
        return text


class ConfigError(UserError):
    """Several config violations at once; each is printed on its own line."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))

    def one_line(self) -> str:
        return "\n".join(f"config error: {p}" for p in self.problems)


def report_user_errors(main: Callable) -> Callable:
    """Decorate a CLI entry point: a UserError becomes one line on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err.one_line()}" if not isinstance(err, ConfigError) else err.one_line(),
                  file=sys.stderr, flush=True)
            sys.exit(USER_ERROR_EXIT)

    return wrapper
