"""The one atomic writer, the run-directory paths, the cache root and the local-model check."""

from __future__ import annotations

import json

import pytest

from selfsteer.utils.io import write_json, write_jsonl, write_text
from selfsteer.utils.paths import cache_root, is_hf_model, require_hf_model
from selfsteer.utils.run_dir import RunDir


def test_writes_replace_whole_files_and_leave_no_temporary(tmp_path):
    path = tmp_path / "records.jsonl"
    write_jsonl(path, [{"a": 1}, {"b": "é"}])
    assert path.read_text(encoding="utf-8") == '{"a": 1}\n{"b": "é"}\n'
    write_json(path, {"c": [1, 2]})
    assert json.loads(path.read_text()) == {"c": [1, 2]}
    write_text(path, "x")
    assert path.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["records.jsonl"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "state.json"
    write_json(path, {"round": 1})
    with pytest.raises(TypeError):
        write_json(path, {"round": object()})  # not serialisable: fails before the rename
    assert json.loads(path.read_text()) == {"round": 1}


def test_run_dir_spells_rounds_and_checkpoints(tmp_path):
    run = RunDir(str(tmp_path))
    assert run.round(7) == tmp_path / "rounds" / "round_0007" and not run.round(7).exists()
    assert run.round(7, create=True).is_dir()
    assert run.checkpoint(12) == tmp_path / "checkpoints" / "round_0012"
    assert run.checkpoint(3, "checkpoints_b") == tmp_path / "checkpoints_b" / "round_0003"


def test_run_dir_lists_a_groups_rounds_in_round_order(tmp_path):
    run = RunDir(tmp_path)
    assert run.numbered() == []
    for name in ("round_0010", "round_0002", "round_x", "other"):
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
    assert run.numbered() == [(2, run.checkpoint(2)), (10, run.checkpoint(10))]


def test_cache_root_honours_the_config_then_selfsteer_cache_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSTEER_CACHE", str(tmp_path / "env"))
    assert str(cache_root("/given")) == "/given"
    assert cache_root(None) == tmp_path / "env"
    monkeypatch.delenv("SELFSTEER_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "selfsteer"


def test_local_model_check_names_the_key(tmp_path):
    assert not is_hf_model(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"sepo.oracle_path='.*' is not a local HF model directory"):
        require_hf_model(tmp_path, "sepo.oracle_path")
    (tmp_path / "config.json").write_text("{}")
    assert require_hf_model(tmp_path, "model.policy") == str(tmp_path)


def test_jsonl_reads_skip_blank_lines_and_name_the_bad_line(tmp_path):
    from selfsteer.utils.io import iter_jsonl, read_jsonl, write_jsonl

    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"a": 1}, {"b": "é"}])
    path.write_text(path.read_text() + "\n   \n" + '{"c": 3}\n', encoding="utf-8")
    assert read_jsonl(path) == [{"a": 1}, {"b": "é"}, {"c": 3}]
    assert [n for n, _ in iter_jsonl(path)] == [1, 2, 5]  # numbers of the file's lines, blanks counted
    path.write_text('{"a": 1}\n\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"rows.jsonl: line 3: a JSON object expected, found list"):
        read_jsonl(path)
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(ValueError, match=r"rows.jsonl: line 2: not JSON"):
        read_jsonl(path)
