"""Coefficient schedules: functions of the remaining progress (1 at the start of training, 0 at the end).

Every schedule is a small frozen dataclass: picklable (SB3 saves models with cloudpickle, and lambdas
do not survive Python upgrades), comparable with ``==``, and with a ``repr`` that is also its string
form, so that a YAML file or a command line can hold it. The grammar of the string form is::

    0.01                      constant
    lin_0.01                  linear from 0.01 (progress 1) to 0 (progress 0) -- rl-zoo3's convention
    lin_0.01_0.001            linear from 0.01 to 0.001
    exp_0.01_0.0001           exponential (geometric) from 0.01 to 0.0001; both must be > 0
    cos_0.01_0                cosine from 0.01 to 0
    step_0.01_0.001@0.5       0.01, then 0.001 once progress_remaining <= 0.5
    step_0.01_0.005@0.6_0.001@0.3   more steps; boundaries strictly decreasing in (0, 1)

Numbers are anything Python's ``float()`` reads (``1e-4``, ``0.5``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

__all__ = [
    "SCHEDULE_GRAMMAR",
    "ArgumentRangeError",
    "ConstantSchedule",
    "CosineSchedule",
    "ExponentialSchedule",
    "LinearSchedule",
    "Schedule",
    "ScheduleLike",
    "StepSchedule",
    "as_schedule",
    "check_schedule",
    "parse_schedule",
    "schedule_value",
]

SCHEDULE_GRAMMAR = (
    "a number ('0.01'), 'lin_START' (linear to 0), 'lin_START_END', 'exp_START_END' (geometric, both > 0), "
    "'cos_START_END', or 'step_V0_V1@P1[_V2@P2...]' (V1 once progress_remaining <= P1, "
    "boundaries strictly decreasing in (0, 1))"
)


class ArgumentRangeError(ValueError, AssertionError):
    """An argument out of its allowed range. Also an AssertionError, because SB3 asserts on some of the same
    arguments (``clip_range_vf > 0``) and code written against SB3 may catch that."""


def _num(x: float) -> str:
    return repr(float(x))


class Schedule:
    """Base class: ``schedule(progress_remaining) -> value`` with ``progress_remaining`` from 1 to 0."""

    def __call__(self, progress_remaining: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def extremes(self) -> tuple[float, float]:
        """The smallest and largest value the schedule takes on [0, 1]."""
        values = [self(1.0), self(0.0)]
        return min(values), max(values)


@dataclass(frozen=True, repr=False)
class ConstantSchedule(Schedule):
    """The same value throughout training."""

    value: float

    def __call__(self, progress_remaining: float) -> float:
        return self.value

    def __repr__(self) -> str:
        return _num(self.value)


@dataclass(frozen=True, repr=False)
class LinearSchedule(Schedule):
    """``end + (start - end) * progress_remaining``."""

    start: float
    end: float = 0.0

    def __call__(self, progress_remaining: float) -> float:
        return self.end + (self.start - self.end) * progress_remaining

    def __repr__(self) -> str:
        return f"lin_{_num(self.start)}_{_num(self.end)}"


@dataclass(frozen=True, repr=False)
class ExponentialSchedule(Schedule):
    """Geometric interpolation ``start * (end / start) ** (1 - progress_remaining)``; start, end > 0."""

    start: float
    end: float

    def __post_init__(self) -> None:
        if not (self.start > 0 and self.end > 0):
            raise ValueError(f"ExponentialSchedule needs start > 0 and end > 0, got start={self.start}, end={self.end}")

    def __call__(self, progress_remaining: float) -> float:
        return self.start * (self.end / self.start) ** (1.0 - progress_remaining)

    def __repr__(self) -> str:
        return f"exp_{_num(self.start)}_{_num(self.end)}"


@dataclass(frozen=True, repr=False)
class CosineSchedule(Schedule):
    """Cosine annealing ``end + (start - end) * (1 + cos(pi * (1 - progress_remaining))) / 2``."""

    start: float
    end: float = 0.0

    def __call__(self, progress_remaining: float) -> float:
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * (1.0 - progress_remaining)))

    def __repr__(self) -> str:
        return f"cos_{_num(self.start)}_{_num(self.end)}"


@dataclass(frozen=True, repr=False)
class StepSchedule(Schedule):
    """Piecewise constant: ``values[i]`` once ``progress_remaining <= boundaries[i - 1]``.

    :param values: the values, the first one in force at the start of training
    :param boundaries: ``len(values) - 1`` progress points, strictly decreasing in (0, 1)
    """

    values: tuple[float, ...]
    boundaries: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(float(v) for v in self.values))
        object.__setattr__(self, "boundaries", tuple(float(b) for b in self.boundaries))
        if len(self.values) != len(self.boundaries) + 1 or len(self.values) < 2:
            raise ValueError(
                f"StepSchedule needs n >= 2 values and n - 1 boundaries, got values={self.values}, "
                f"boundaries={self.boundaries}"
            )
        bounds = (1.0, *self.boundaries, 0.0)
        if any(not (a > b) for a, b in pairwise(bounds)):
            raise ValueError(f"StepSchedule boundaries must be strictly decreasing in (0, 1), got {self.boundaries}")

    def __call__(self, progress_remaining: float) -> float:
        index = sum(1 for b in self.boundaries if progress_remaining <= b)
        return self.values[index]

    def extremes(self) -> tuple[float, float]:
        return min(self.values), max(self.values)

    def __repr__(self) -> str:
        parts = [_num(self.values[0])] + [f"{_num(v)}@{_num(b)}" for v, b in zip(self.values[1:], self.boundaries)]
        return "step_" + "_".join(parts)


ScheduleLike = float | int | str | Callable[[float], float]


def _malformed(text: str, why: str = "") -> ValueError:
    extra = f" ({why})" if why else ""
    return ValueError(f"Malformed schedule string {text!r}{extra}; expected {SCHEDULE_GRAMMAR}")


def parse_schedule(text: str) -> Schedule:
    """Parse the string form of a schedule (see the module docstring for the grammar).

    :param text: e.g. ``"lin_0.01"``, ``"exp_0.01_1e-4"``, ``"step_0.01_0.001@0.5"``
    :return: the schedule; ``parse_schedule(repr(s)) == s`` for every schedule ``s``
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_schedule expects a str, got {type(text).__name__}: {text!r}")
    s = text.strip()
    try:
        return ConstantSchedule(float(s))
    except ValueError:
        pass
    kind, _, rest = s.partition("_")
    args = rest.split("_") if rest else []
    try:
        if kind == "step":
            if len(args) < 2:
                raise _malformed(text, "step needs at least two values")
            values = [float(args[0])]
            boundaries = []
            for item in args[1:]:
                value, at, bound = item.partition("@")
                if not at:
                    raise _malformed(text, f"step value {item!r} lacks '@PROGRESS'")
                values.append(float(value))
                boundaries.append(float(bound))
            return StepSchedule(tuple(values), tuple(boundaries))
        numbers = [float(a) for a in args]
    except ValueError as error:
        if "Malformed" in str(error):
            raise
        raise _malformed(text, str(error)) from None
    if kind == "lin" and len(numbers) in (1, 2):
        return LinearSchedule(*numbers)
    if kind == "cos" and len(numbers) in (1, 2):
        return CosineSchedule(*numbers)
    if kind == "exp" and len(numbers) == 2:
        try:
            return ExponentialSchedule(*numbers)
        except ValueError as error:
            raise _malformed(text, str(error)) from None
    raise _malformed(text)


def as_schedule(value: ScheduleLike, name: str = "value") -> Callable[[float], float]:
    """Turn a float, a schedule string or a callable into a callable of ``progress_remaining``.

    :param value: a number, a string in the schedule grammar, or a callable ``progress_remaining -> value``
    :param name: the argument's name, for error messages
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a float, a schedule string or a callable, got bool {value!r}")
    if isinstance(value, (int, float)):
        return ConstantSchedule(float(value))
    if isinstance(value, str):
        try:
            return parse_schedule(value)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
    if callable(value):
        return value
    raise TypeError(
        f"{name} must be a float, a schedule string ({SCHEDULE_GRAMMAR}) or a callable of progress_remaining, "
        f"got {type(value).__name__}: {value!r}"
    )


def schedule_value(value: ScheduleLike | Callable[[float], float], progress_remaining: float) -> float:
    """The value in force at ``progress_remaining``, for a float or a callable."""
    if callable(value):
        return float(value(progress_remaining))
    return float(value)  # type: ignore[arg-type]


def check_schedule(
    value: ScheduleLike,
    name: str,
    minimum: float = 0.0,
    strict: bool = False,
    allow_none: bool = False,
) -> ScheduleLike | None:
    """Validate a coefficient at construction time and return it with strings parsed.

    Floats are kept as they are (so SB3 code that reads a float still sees one); strings become
    schedule objects. The value at progress 1 must be ``>= minimum`` (``> minimum`` with ``strict``)
    and no value may fall below ``minimum`` (rl-zoo3's ``clip_range: lin_0.2`` ends at 0, which SB3 allows).

    :raises TypeError: for a value that is neither a number, a string nor a callable
    :raises ValueError: for a malformed string or a value out of range
    """
    if value is None:
        if allow_none:
            return None
        raise TypeError(f"{name} must not be None")
    schedule = as_schedule(value, name)
    try:
        start = float(schedule(1.0))
        low = schedule.extremes()[0] if isinstance(schedule, Schedule) else min(start, float(schedule(0.0)))
    except Exception as error:  # a user callable that cannot be evaluated is an input error
        raise TypeError(f"{name}: calling the schedule at progress 1 and 0 failed: {error!r}") from error
    op = ">" if strict else ">="
    start_ok = start > minimum if strict else start >= minimum
    if not start_ok or not low >= minimum or math.isnan(low):
        raise ArgumentRangeError(
            f"{name} must be {op} {minimum} at the start of training and >= {minimum} throughout, "
            f"got {value!r} (start {start}, smallest value {low})"
        )
    return float(value) if isinstance(value, (int, float)) else schedule
