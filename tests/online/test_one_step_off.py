"""OneStepOff: one background sampling call, taken by the round it was started for."""

from __future__ import annotations

import threading

import pytest

from selfsteer.online.one_step_off import OneStepOff, Sampled


def _sampled(policy_round: int) -> Sampled:
    return Sampled([], [], [], {}, {}, {}, 0, policy_round)


def test_staleness_counts_rounds_of_training_missing_from_the_sampling_weights():
    assert _sampled(0).staleness(1) == 0  # round 1 samples with the start weights: on-policy
    assert _sampled(1).staleness(2) == 0  # synchronous: round 2 samples after round 1's sync
    assert _sampled(1).staleness(3) == 1  # one-step-off: round 3 sampled while round 2 trained


def test_runs_in_the_background_and_is_taken_by_its_round():
    ahead, release = OneStepOff(True, policy_round=4), threading.Event()
    started = threading.Event()

    def sample(policy_round):
        started.set()
        release.wait(5)
        return _sampled(policy_round)

    ahead.submit(6, sample, ahead.policy_round)
    assert started.wait(5)  # running while the caller goes on (the trainer trains here)
    assert ahead.take(5) is None  # not the round it was started for
    release.set()
    assert ahead.wait() >= 0
    assert ahead.take(6).policy_round == 4
    assert ahead.take(6) is None  # taken once
    ahead.close()


def test_error_in_the_background_surfaces_on_wait_and_take():
    ahead = OneStepOff(True)

    def broken():
        raise RuntimeError("engine 1 died")

    ahead.submit(2, broken)
    ahead.wait()  # waits without raising: the error belongs to the round that takes it
    with pytest.raises(RuntimeError, match="engine 1 died"):
        ahead.take(2)
    ahead.close()


def test_only_one_call_in_flight():
    ahead = OneStepOff(True)
    ahead.submit(2, _sampled, 1)
    with pytest.raises(RuntimeError, match="round 2 is still being sampled ahead"):
        ahead.submit(3, _sampled, 1)
    ahead.close()


def test_disabled_never_samples_ahead():
    ahead = OneStepOff(False)
    ahead.submit(2, pytest.fail, "must not run")
    assert ahead.take(2) is None and ahead.wait() >= 0
    ahead.close()
