"""Resumable phase output: records survive a kill at any point, a rerun skips their ids, nothing is lost."""

from __future__ import annotations

import json

import pytest

from selfsteer.recipe.records import RecordError, principles_record
from selfsteer.recipe.resume import PhaseOutput


def rec(i: int) -> dict:
    return principles_record(f"prompt {i}", f"id-{i}", f"good {i}", f"bad {i}")


def test_records_are_on_disk_as_soon_as_appended_and_the_list_at_finish(tmp_path):
    out_path = tmp_path / "principles.json"
    out = PhaseOutput(out_path, "uuid")
    out.append(rec(0))
    out.append(rec(1))
    side = tmp_path / "principles.json.partial.jsonl"
    # Before finish(): the side file holds both records, the JSON list does not exist yet.
    assert [json.loads(x) for x in side.read_text().splitlines()] == [rec(0), rec(1)]
    assert not out_path.exists()
    out.finish()
    assert json.loads(out_path.read_text()) == [rec(0), rec(1)]
    assert not side.exists()


def test_a_killed_phase_resumes_without_repeating_or_losing_records(tmp_path):
    out_path = tmp_path / "principles.json"
    side = tmp_path / "principles.json.partial.jsonl"
    # A first run finished records 0-1 earlier; a second run was killed after record 2, mid-way
    # through writing record 3.
    out_path.write_text(json.dumps([rec(0), rec(1)], indent=2, ensure_ascii=False))
    side.write_text(json.dumps(rec(2)) + "\n" + json.dumps(rec(3))[:25])
    out = PhaseOutput(out_path, "uuid")
    assert out.done == {"id-0", "id-1", "id-2"}  # the half-written record is not done
    todo = [i for i in range(5) if f"id-{i}" not in out.done]
    assert todo == [3, 4]
    for i in todo:
        out.append(rec(i))
    # The side file was trimmed before appending: every line parses.
    assert [json.loads(x)["uuid"] for x in side.read_text().splitlines()] == ["id-2", "id-3", "id-4"]
    out.finish()
    assert json.loads(out_path.read_text()) == [rec(i) for i in range(5)]
    assert out_path.read_text() == json.dumps([rec(i) for i in range(5)], indent=2, ensure_ascii=False)


def test_a_whole_last_record_without_its_newline_is_kept(tmp_path):
    side = tmp_path / "p.json.partial.jsonl"
    side.write_text(json.dumps(rec(0)))  # killed between the record and its newline
    out = PhaseOutput(tmp_path / "p.json", "uuid")
    assert out.done == {"id-0"}
    out.append(rec(1))
    out.finish()
    assert json.loads((tmp_path / "p.json").read_text()) == [rec(0), rec(1)]


def test_killed_between_writing_the_list_and_removing_the_side_file(tmp_path):
    out_path = tmp_path / "p.json"
    out_path.write_text(json.dumps([rec(0), rec(1)], indent=2))
    (tmp_path / "p.json.partial.jsonl").write_text(json.dumps(rec(1)) + "\n")
    out = PhaseOutput(out_path, "uuid")
    assert out.done == {"id-0", "id-1"} and len(out.records) == 2
    out.finish()
    assert json.loads(out_path.read_text()) == [rec(0), rec(1)]


def test_finished_output_is_left_byte_for_byte_when_nothing_is_new(tmp_path):
    out_path = tmp_path / "p.json"
    original = json.dumps([rec(0)], indent=4)  # not our formatting: must not be rewritten
    out_path.write_text(original)
    PhaseOutput(out_path, "uuid").finish()
    assert out_path.read_text() == original


def test_an_error_mid_phase_keeps_everything_written(tmp_path):
    out_path = tmp_path / "p.json"
    out_path.write_text(json.dumps([rec(0)], indent=2))
    with pytest.raises(RuntimeError):
        with PhaseOutput(out_path, "uuid") as out:
            out.append(rec(1))
            raise RuntimeError("engine died")
    assert json.loads(out_path.read_text()) == [rec(0)]  # the finished list is untouched
    again = PhaseOutput(out_path, "uuid")
    assert again.done == {"id-0", "id-1"}


def test_damaged_outputs_are_errors_and_stay_untouched(tmp_path):
    out_path = tmp_path / "p.json"
    out_path.write_text("[{not json")
    with pytest.raises(RecordError, match=r"p\.json: the existing output is not a JSON list"):
        PhaseOutput(out_path, "uuid")
    assert out_path.read_text() == "[{not json"
    out_path.write_text(json.dumps([{"prompt": "x"}]))
    with pytest.raises(RecordError, match="not a list of records with 'uuid'"):
        PhaseOutput(out_path, "uuid")
    out_path.unlink()
    side = tmp_path / "p.json.partial.jsonl"
    side.write_text("garbage\n" + json.dumps(rec(1)) + "\n")
    with pytest.raises(RecordError, match=r"line 1: not valid JSON; the side file is damaged"):
        PhaseOutput(out_path, "uuid")
    assert side.read_text().startswith("garbage")


def test_dpo_outputs_resume_on_prompt_id(tmp_path):
    from selfsteer.recipe.records import dpo_record

    out = PhaseOutput(tmp_path / "dpo.json", "prompt_id")
    out.append(dpo_record("q", "a", "b", 7))
    out.finish()
    assert PhaseOutput(tmp_path / "dpo.json", "prompt_id").done == {"7"}
