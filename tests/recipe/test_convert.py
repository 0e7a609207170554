"""UltraFeedback-binarized parquet -> the recipe's prompts JSON, on a parquet the test writes itself."""

from __future__ import annotations

import json

import pytest

from selfsteer.recipe.convert import convert_ultrafeedback
from selfsteer.recipe.records import RecordError, read_records


def _ultrafeedback(path, rows):
    """A parquet with train_prefs' columns: prompt, prompt_id, chosen, rejected, messages, scores."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = [{"prompt": prompt, "prompt_id": pid,
              "chosen": [{"content": prompt, "role": "user"}, {"content": "good", "role": "assistant"}],
              "rejected": [{"content": prompt, "role": "user"}, {"content": "bad", "role": "assistant"}],
              "messages": [{"content": prompt, "role": "user"}, {"content": "good", "role": "assistant"}],
              "score_chosen": 8.0, "score_rejected": 3.5} for prompt, pid in rows]
    pq.write_table(pa.Table.from_pylist(table), path)
    return path


ROWS = [("how can i develop a habit of drawing daily", "86c4f0a5" * 8),
        ("Écris un haïku sur la pluie.", "11f2" * 16),
        ("how can i develop a habit of drawing daily", "86c4f0a5" * 8),  # train_prefs repeats a few prompts
        ("What is 2+2?", "0a" * 32)]


def test_prompt_and_prompt_id_become_prompt_and_uuid(tmp_path):
    src = _ultrafeedback(tmp_path / "train_prefs-00000-of-00001.parquet", ROWS)
    counts = convert_ultrafeedback(src, tmp_path / "prompts.json")
    expected = [{"prompt": ROWS[0][0], "uuid": ROWS[0][1]}, {"prompt": ROWS[1][0], "uuid": ROWS[1][1]},
                {"prompt": ROWS[3][0], "uuid": ROWS[3][1]}]
    assert counts == {"rows": 4, "written": 3, "duplicates": 1}
    assert (tmp_path / "prompts.json").read_text(encoding="utf-8") == json.dumps(expected, indent=2, ensure_ascii=False)
    # The output is what phase 1 reads.
    loaded = read_records(tmp_path / "prompts.json", "prompts")
    assert [r["uuid"] for r in loaded.records] == [e["uuid"] for e in expected]


def test_limit_keeps_the_first_distinct_prompts(tmp_path):
    src = _ultrafeedback(tmp_path / "uf.parquet", ROWS)
    assert convert_ultrafeedback(src, tmp_path / "p.json", limit=2)["written"] == 2
    assert [r["uuid"] for r in json.loads((tmp_path / "p.json").read_text())] == [ROWS[0][1], ROWS[1][1]]


def test_missing_column_and_bad_rows_are_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "no_id.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "a"}]), path)
    with pytest.raises(RecordError, match=r"no_id\.parquet: row 0: missing field 'prompt_id'"):
        convert_ultrafeedback(path, tmp_path / "out.json")
    path = _ultrafeedback(tmp_path / "empty_prompt.parquet", [("a", "1"), ("  ", "2")])
    with pytest.raises(RecordError, match=r"empty_prompt\.parquet: row 1: field 'prompt' must be a non-empty string"):
        convert_ultrafeedback(path, tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()
    with pytest.raises(RecordError, match="expected a .parquet file"):
        convert_ultrafeedback(tmp_path / "x.json", tmp_path / "out.json")


def test_cli(tmp_path, capsys):
    from selfsteer.cli.recipe import main

    src = _ultrafeedback(tmp_path / "uf.parquet", ROWS)
    assert main(["convert-ultrafeedback", str(src), str(tmp_path / "p.json"), "--limit", "1"]) == 0
    assert "wrote 1 prompts" in capsys.readouterr().out
    assert main(["convert-ultrafeedback", str(tmp_path / "missing.parquet"), str(tmp_path / "q.json")]) == 2
    assert "missing.parquet: file not found" in capsys.readouterr().err
