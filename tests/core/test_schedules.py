import pytest

from relaxcli import make_schedule
from relaxcli.core.schedules import SCHEDULES


@pytest.mark.parametrize("name", ["triangle", "linear", "cosine"])
@pytest.mark.parametrize("total", [1, 2, 7, 100])
def test_decaying_schedules_end_at_exactly_zero(name: str, total: int) -> None:
    s = make_schedule(name, total, theta_max=0.8)
    assert s.theta(total - 1) == 0.0
    assert all(0.0 <= s.theta(k) <= 0.8 for k in range(total))


def test_triangle_rises_then_falls() -> None:
    s = make_schedule("triangle", 101, theta_max=2.0)
    values = [s.theta(k) for k in range(101)]
    assert values[0] == 0.0 and values[50] == pytest.approx(2.0) and values[100] == 0.0
    assert values[:51] == sorted(values[:51]) and values[50:] == sorted(values[50:], reverse=True)


def test_linear_and_cosine_start_at_max_and_decrease() -> None:
    for name in ("linear", "cosine"):
        s = make_schedule(name, 50)
        values = [s.theta(k) for k in range(50)]
        assert values[0] == 1.0 and values == sorted(values, reverse=True)


def test_constant_and_end_fraction() -> None:
    assert {make_schedule("constant", 10, theta_max=0.3).theta(k) for k in range(10)} == {0.3}
    s = make_schedule("triangle", 100, end=0.7)
    assert s.theta(34) > 0.9  # the peak moves to the middle of the first 70 steps
    assert all(s.theta(k) == 0.0 for k in range(69, 100))  # equivariant fine-tuning afterwards
    c = make_schedule("constant", 10, end=0.5)
    assert [c.theta(k) for k in range(10)] == [1.0] * 5 + [0.0] * 5


def test_epoch_granularity_holds_theta_within_an_epoch() -> None:
    s = make_schedule("triangle", 40, granularity="epoch", steps_per_epoch=8)  # 5 epochs
    per_epoch = [{s.theta(e * 8 + k) for k in range(8)} for e in range(5)]
    assert all(len(v) == 1 for v in per_epoch)
    assert [v.pop() for v in per_epoch] == [0.0, 0.5, 1.0, 0.5, 0.0]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown θ schedule 'trinagle'"):
        make_schedule("trinagle", 10)
    with pytest.raises(ValueError, match="end must be"):
        make_schedule("triangle", 10, end=0.0)
    assert set(SCHEDULES) == {"triangle", "constant", "linear", "cosine", "ace", "ace_elastic"}
