"""The one exception type users see: a one-line message naming the file, row, column or flag; and the
errors of the layers below the command line, each in its own layer's words."""

from __future__ import annotations

import math
from functools import partial
from typing import Any


class DpradError(Exception):
    """A problem with the user's input or request. The CLI prints ``str(err)`` on one line and exits 2."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class ParameterError(DpradError):
    """A mechanism's parameter out of its domain, in the mechanism's own words: ``str(err)`` is
    "epsilon 0 must be a positive number". ``parameter`` is the config field (``epsilon``, ``delta``,
    ``noise_multiplier``, ``accountant``, ...), ``value`` the value refused, ``problem`` the rest of the
    sentence. The layers that know the flags say it in the user's words (:func:`dprad.config.flag_message`:
    "--epsilon 0 must be a positive number")."""

    def __init__(self, *, parameter: str, value: object, problem: str) -> None:
        self.parameter, self.value, self.problem = parameter, value, problem
        super().__init__(self.worded(parameter))

    def worded(self, name: str) -> str:
        """The message with the parameter called ``name`` (its own name, or the flag that sets it)."""
        return " ".join(f"{name} {_shown(self.value)} {self.problem}".split())

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        # keyword-only arguments: rebuilt from them, so that a sweep's worker process can send it back
        return partial(type(self), parameter=self.parameter, value=self.value, problem=self.problem), ()


def _shown(value: object) -> str:
    """A value as a message quotes it: a string in quotes, a float in its shortest exact form (``0``,
    ``1e+09``, ``0.123456789``), anything else as ``str`` does."""
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, float):
        short = f"{value:g}"
        return short if not math.isfinite(value) or float(short) == value else repr(value)
    return str(value)


class PrivacyInvariantError(RuntimeError):
    """dprad's own code broke an invariant a privacy guarantee rests on (e.g. the sampler used is not the
    one the accountant assumes). A bug, not the user's input: never a :class:`DpradError`, so it stops with
    a traceback, and unlike ``assert`` it is raised under ``python -O`` too."""
