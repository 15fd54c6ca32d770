"""--time-budget decides from measurements that hold: rates timed until two rounds agree, the
real pass watched while it runs, epochs stopped when the machine turns out slower than planned,
and a refusal worded in the budget of the command the user ran."""

from __future__ import annotations

import json
import time

import pytest
from conftest import make_image_folder

import leanvision as lv
from leanvision.errors import BudgetError
from leanvision.search.base import _in_optimize_words
from leanvision.search.schedule import BASE_SHARE
from leanvision.training import transfer_run
from leanvision.training.throughput import (
    PassWatch,
    Rate,
    budget_refusal,
    measure_rate,
    next_epoch_overruns,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def rounds_taking(clock: FakeClock, seconds: list[float], items: int = 10):
    """A round function whose k-th call (warm-up first) takes seconds[k] on the fake clock."""
    calls = iter(seconds)

    def one_round() -> int:
        clock.now += next(calls)
        return items

    return one_round


def test_a_slow_first_round_is_measured_again_until_two_agree():
    clock = FakeClock()
    # warm-up 9 s, then one slow moment (8 s), then the machine's real pace (1.0 s, 1.05 s)
    rate = measure_rate(rounds_taking(clock, [9.0, 8.0, 1.0, 1.05]), clock=clock)
    assert rate.stable and rate.rounds == pytest.approx([0.8, 0.1, 0.105])
    assert rate.planning == pytest.approx(0.1025)
    assert rate.fastest == pytest.approx(0.1)


def test_a_rate_that_never_settles_stops_at_the_probe_limit_and_plans_on_the_median():
    clock = FakeClock()
    rate = measure_rate(rounds_taking(clock, [1.0, 1.0, 3.0, 1.0, 3.0, 1.0, 3.0]), clock=clock,
                        max_rounds=4)
    assert not rate.stable and len(rate.rounds) == 4
    assert rate.planning == pytest.approx(0.2) and rate.fastest == pytest.approx(0.1)


def test_a_pass_that_starts_slowly_and_speeds_up_is_not_refused():
    clock = FakeClock()
    watch = PassWatch(total=1000, deadline=100.0, clock=clock)
    clock.now += 30.0  # the first 100 images: 0.3 s each, which would need 300 s for all
    watch.advance(100)
    assert watch.cannot_finish() is not None  # slow all along so far: cannot fit
    for _ in range(10):  # then 0.01 s an image
        clock.now += 0.5
        watch.advance(50)
    assert watch.cannot_finish() is None


def test_a_pass_that_stays_slow_is_refused_only_once_enough_is_measured():
    clock = FakeClock()
    watch = PassWatch(total=1000, deadline=100.0, clock=clock)
    clock.now += 6.0
    watch.advance(20)  # 2% done: not enough to judge
    assert watch.cannot_finish() is None
    for _ in range(9):
        clock.now += 6.0
        watch.advance(20)  # 0.3 s an image throughout: 300 s for the pass
    assert watch.cannot_finish() == pytest.approx(800 * 0.3)
    assert PassWatch(total=1000, deadline=None, clock=clock).cannot_finish() is None


def test_training_stops_before_an_epoch_that_would_overrun():
    history = [{"epoch_seconds": 10.0}, {"epoch_seconds": 12.0}]
    clock = FakeClock()
    clock.now = 50.0
    assert next_epoch_overruns(70.0, history, 2, 5, clock=clock) is None  # 62 <= 70
    why = next_epoch_overruns(60.0, history, 2, 5, clock=clock)
    assert why.startswith("time budget: stopped after epoch 2 of 5")
    assert next_epoch_overruns(60.0, history, 5, 5, clock=clock) is None  # nothing left
    assert next_epoch_overruns(None, history, 2, 5, clock=clock) is None


def test_the_base_refusal_quotes_the_budget_of_the_optimize_command():
    exc = budget_refusal(12.0, "even the frozen feature pass", 12.1 * 60, "2934 images ...")
    assert "--time-budget 12 minutes" in str(exc) and exc.details["suggested_minutes"] == 19
    worded = _in_optimize_words(exc, 30.0)
    expected = -(-19 // BASE_SHARE)  # the optimize budget whose base share holds 19 minutes
    assert str(worded).startswith("optimize --time-budget 30 minutes gives the base 40% of it "
                                  "(12 minutes), which cannot fit even the frozen feature pass")
    assert f"pass --time-budget {expected:.0f} or more" in str(worded)
    assert worded.details["suggested_minutes"] == expected
    assert _in_optimize_words(exc, None) is exc


@pytest.mark.usefixtures("one_thread")
def test_slow_first_batches_of_the_frozen_pass_do_not_refuse_the_run(tmp_path, monkeypatch):
    # The probe's first timed batches are slow (another process, kernels built late): one
    # 8-image timing would have refused this budget; measuring until two rounds agree does not.
    photos = make_image_folder(tmp_path / "photos", per_class=10, size=97)
    real = transfer_run.cache_lower
    calls = {"n": 0}

    def slow_at_first(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= 2:  # the warm-up round and the first timed round
            time.sleep(6.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(transfer_run, "cache_lower", slow_at_first)
    slow_per_image = 6.0 / transfer_run.FEATURE_BATCH  # the old probe: one timed batch
    minutes = 0.5
    assert slow_per_image * 2 * 30 > minutes * 60  # what one slow timing would have refused
    out = tmp_path / "run"
    lv.train(photos, out, model="efficientnet_lite0", img_size=64, epochs=2, batch_size=8,
             progress=False, val_fraction=0.3, time_budget=minutes, precision="fp32")
    card = json.loads((out / "model.json").read_text())
    assert card["training"]["finetune"] == "lp-ft"
    assert card["training"]["transfer"]["frozen_pass_images_per_second"] > 1 / slow_per_image


def test_a_machine_slow_throughout_is_refused_before_any_work(tmp_path, monkeypatch):
    photos = make_image_folder(tmp_path / "photos", per_class=10, size=97)
    real = transfer_run.cache_lower

    def always_slow(*args, **kwargs):
        time.sleep(0.4)
        return real(*args, **kwargs)

    monkeypatch.setattr(transfer_run, "cache_lower", always_slow)
    out = tmp_path / "run"
    with pytest.raises(BudgetError, match=r"--time-budget 0.01 minutes cannot fit even the "
                                          r"frozen feature pass.*pass --time-budget \d+"):
        lv.train(photos, out, model="efficientnet_lite0", img_size=64, progress=False,
                 time_budget=0.01)
    assert not (out / "model.json").exists() and not (out / "config.json").exists()


def test_rate_record_keeps_every_round():
    rate = Rate([0.5, 0.2, 0.21], stable=True)
    assert rate.record() == {"seconds_per_item_rounds": [0.5, 0.2, 0.21], "stable": True}
