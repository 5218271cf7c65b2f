"""``profile_decode``'s attribution of a step's time to kernels launched overlapped."""

from __future__ import annotations

import pytest

from ascend_compile.tools.profile_decode import exposed_times


def test_overlapped_kernels_add_only_what_runs_past_the_kernels_before_them() -> None:
    """b starts while a runs (an overlapped launch waiting for a) and adds only its part past a's
    end; c starts after a gap (idle); d lies inside c and adds nothing.  Added times and idle sum to
    the span, while the own times do not (the negative control: summing own times overcounts)."""
    kernels = [("c", 20.0, 30.0), ("a", 0.0, 10.0), ("b", 4.0, 15.0), ("d", 22.0, 25.0), ("b", 30.0, 31.0)]
    times, idle = exposed_times(kernels)
    assert {name: time.added_us for name, time in times.items()} == pytest.approx({"a": 10, "b": 6, "c": 10, "d": 0})
    assert times["b"].own_us == pytest.approx(12) and times["b"].launches == 2
    assert idle == pytest.approx(5)
    span = 31.0
    assert sum(time.added_us for time in times.values()) + idle == pytest.approx(span)
    assert sum(time.own_us for time in times.values()) > span


def test_no_kernels() -> None:
    assert exposed_times([]) == ({}, 0.0)


@pytest.mark.parametrize("argv", [["--prefill", "0"], ["--prefill", "512", "--zoo", "plain"]])
def test_prefill_takes_a_positive_length_for_the_bench_model(argv: list[str],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """``--prefill`` profiles bench_decode's model; a zoo model or an empty prefill is a usage error that says why."""
    from ascend_compile.tools.profile_decode import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "--prefill takes a positive token count" in capsys.readouterr().err
