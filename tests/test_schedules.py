"""Schedules: hand-computed values, the string form and its round trip, errors that show the grammar."""

from __future__ import annotations

import math
import pickle

import pytest

from sb3_ppo_variants.schedules import (
    ConstantSchedule,
    CosineSchedule,
    ExponentialSchedule,
    LinearSchedule,
    StepSchedule,
    as_schedule,
    check_schedule,
    parse_schedule,
)

# (schedule, value at progress 1, at 0.5, at 0)
CASES = [
    (ConstantSchedule(0.01), 0.01, 0.01, 0.01),
    (LinearSchedule(0.01), 0.01, 0.005, 0.0),
    (LinearSchedule(0.01, 0.001), 0.01, 0.0055, 0.001),
    (ExponentialSchedule(0.01, 1e-4), 0.01, 1e-3, 1e-4),
    (CosineSchedule(0.01, 0.0), 0.01, 0.005, 0.0),
    (CosineSchedule(1.0, 0.5), 1.0, 0.75, 0.5),
    (StepSchedule((0.01, 0.001), (0.5,)), 0.01, 0.001, 0.001),
    (StepSchedule((3.0, 2.0, 1.0), (0.6, 0.3)), 3.0, 2.0, 1.0),
]


@pytest.mark.parametrize(("schedule", "start", "middle", "end"), CASES, ids=[repr(c[0]) for c in CASES])
def test_values_at_1_half_0(schedule, start: float, middle: float, end: float) -> None:
    # the schedule's float64 formula vs a decimal literal (0.001 + (0.01 - 0.001) * 0.5 against 0.0055):
    # measured at most 1.7e-16 relative
    assert schedule(1.0) == pytest.approx(start, rel=1e-14, abs=0)
    assert schedule(0.5) == pytest.approx(middle, rel=1e-14, abs=0)
    assert schedule(0.0) == pytest.approx(end, rel=1e-14, abs=0)  # the same rounding source


def test_cosine_quarter_and_step_just_before_boundary() -> None:
    # 1 - 0.75 and pi * 0.25 = pi / 4 are exact, so the schedule does the same operations as the hand formula
    assert CosineSchedule(1.0, 0.0)(0.75) == 0.5 * (1 + math.cos(math.pi / 4))
    assert StepSchedule((0.01, 0.001), (0.5,))(0.5000001) == 0.01


@pytest.mark.parametrize("schedule", [c[0] for c in CASES], ids=[repr(c[0]) for c in CASES])
def test_string_round_trip_and_pickle(schedule) -> None:
    assert parse_schedule(repr(schedule)) == schedule
    assert pickle.loads(pickle.dumps(schedule)) == schedule


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.01", ConstantSchedule(0.01)),
        ("lin_0.01", LinearSchedule(0.01, 0.0)),
        ("lin_0.01_0.001", LinearSchedule(0.01, 0.001)),
        ("exp_0.01_1e-4", ExponentialSchedule(0.01, 1e-4)),
        ("cos_0.01_0", CosineSchedule(0.01, 0.0)),
        ("cos_0.01", CosineSchedule(0.01, 0.0)),
        ("step_0.01_0.001@0.5", StepSchedule((0.01, 0.001), (0.5,))),
        ("step_3_2@0.6_1@0.3", StepSchedule((3, 2, 1), (0.6, 0.3))),
    ],
)
def test_parse(text: str, expected) -> None:
    assert parse_schedule(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "linear_0.01",
        "lin_",
        "lin_a",
        "lin_1_2_3",
        "exp_0.01",
        "exp_0_1",
        "exp_-1_0.1",
        "step_0.01",
        "step_1_2",
        "step_1_2@1.5",
        "step_1_2@0.3_3@0.6",
        "cos_1_2_3",
    ],
)
def test_malformed_strings_show_the_grammar(text: str) -> None:
    with pytest.raises(ValueError, match=r"Malformed schedule string .*expected a number"):
        parse_schedule(text)


def test_as_schedule_and_check_schedule_errors_name_the_argument() -> None:
    assert as_schedule(0.3, "x")(0.1) == 0.3
    assert as_schedule("lin_1", "x")(0.25) == 0.25
    with pytest.raises(ValueError, match="ent_coef: Malformed"):
        as_schedule("lin_x", "ent_coef")
    with pytest.raises(TypeError, match="ent_coef must be a float"):
        as_schedule([0.1], "ent_coef")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ent_coef"):
        as_schedule(True, "ent_coef")
    with pytest.raises(ValueError, match=r"kl_coef must be >= 0.0 .*-0.5"):
        check_schedule(-0.5, "kl_coef")
    with pytest.raises(ValueError, match=r"clip_range must be > 0\.0"):
        check_schedule(0.0, "clip_range", strict=True)
    with pytest.raises(ValueError, match="ent_coef"):
        check_schedule("lin_-0.01", "ent_coef")
    with pytest.raises(ValueError, match="ent_coef"):
        check_schedule(lambda p: p - 0.5, "ent_coef")
    # rl-zoo3's clip_range: lin_0.2 ends at 0, which SB3 accepts
    assert check_schedule("lin_0.2", "clip_range", strict=True) == LinearSchedule(0.2, 0.0)
    assert check_schedule(0.1, "ent_coef") == 0.1
