"""The roofline's plain-word doubts: each fires on the reading it names, and only then."""

from minispec.roofline import machine_load, timing_doubts


def test_a_clean_measurement_raises_no_doubt():
    assert timing_doubts(t1_ms=30.0, bound_ms=25.0, step_ms=33.0, load=(0.5, 2)) == []


def test_a_busy_machine_is_named():
    (doubt,) = timing_doubts(30.0, 25.0, 33.0, load=(3.1, 2))
    assert "busy" in doubt and "3.1" in doubt


def test_a_pass_far_above_the_bound_is_named():
    (doubt,) = timing_doubts(t1_ms=100.0, bound_ms=25.0)
    assert "4.0x the memory bound" in doubt


def test_a_pass_slower_than_a_whole_step_is_named():
    (doubt,) = timing_doubts(t1_ms=45.0, bound_ms=25.0, step_ms=33.0)
    assert "longer than a whole decoding step" in doubt
    assert timing_doubts(t1_ms=35.7, bound_ms=25.0, step_ms=34.4) == []  # a shorter context


def test_machine_load_reports_threads():
    load, threads = machine_load()
    assert load >= 0.0 and threads >= 1
