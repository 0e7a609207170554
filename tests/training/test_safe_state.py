"""Trainer state loads weights-only: a planted object is refused by name and never runs (issue #26 item 7)."""

from __future__ import annotations

import pathlib

import pytest
import torch

from selfsteer.training.safe_state import UnsafeStateError, check_state_dir, safe_load


class Marker:
    """Harmless stand-in for a malicious object: unpickling it creates a file."""

    def __init__(self, path):
        self.path = pathlib.Path(path)

    def __reduce__(self):
        return pathlib.Path.touch, (self.path,)


def _planted(tmp_path):
    state = tmp_path / "round_0001"
    state.mkdir()
    torch.save({"module": {"w": torch.ones(2)}}, state / "zero_pp_rank_1_mp_rank_00_model_states.pt")
    planted = state / "zero_pp_rank_0_mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.ones(2)}, "extra": Marker(tmp_path / "marker")}, planted)
    return state, planted


def test_marker_runs_under_plain_unpickling(tmp_path):
    """The marker is live: torch.load(weights_only=False), as DeepSpeed calls it, runs it."""
    _, planted = _planted(tmp_path)
    torch.load(planted, weights_only=False)
    assert (tmp_path / "marker").exists()


def test_planted_object_is_refused_by_name_and_never_runs(tmp_path):
    state, planted = _planted(tmp_path)
    with pytest.raises(UnsafeStateError, match=str(planted)) as err:
        check_state_dir(state)
    assert "pathlib" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UnsafeStateError, match=str(planted)):
        safe_load(str(planted))
    assert not (tmp_path / "marker").exists()


def test_legacy_pickle_file_is_refused(tmp_path):
    import pickle

    path = tmp_path / "optimizer.pt"
    path.write_bytes(pickle.dumps({"x": Marker(tmp_path / "marker")}))
    with pytest.raises(UnsafeStateError, match="not a torch zip checkpoint"):
        check_state_dir(tmp_path)
    assert not (tmp_path / "marker").exists()


def test_deepspeed_state_classes_load(tmp_path):
    """Each allow-listed DeepSpeed class round-trips weights-only (what ZeRO 1-3 and fp16 save)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    saved = {"loss_scaler": LossScaler(1.0), "dynamic": DynamicLossScaler(2.0 ** 16, 1000, 1.0, 2, False),
             "zero_stage": ZeroStageEnum.gradients, "mappings": {"w": fragment_address(numel=4, start=8)},
             "state": {0: {"exp_avg": torch.zeros(3), "step": torch.tensor(5.0)}}}
    torch.save(saved, tmp_path / "optim_states.pt")
    check_state_dir(tmp_path)
    loaded = safe_load(str(tmp_path / "optim_states.pt"))
    assert loaded["zero_stage"] is ZeroStageEnum.gradients
    assert loaded["mappings"]["w"] == fragment_address(numel=4, start=8)
    assert loaded["loss_scaler"].cur_scale == 1.0 and loaded["dynamic"].cur_scale == 2.0 ** 16
    torch.testing.assert_close(loaded["state"][0]["step"], torch.tensor(5.0))
