"""Prompt files through the real `datasets` loaders: order, ids, row-level errors, and the cursor."""

from __future__ import annotations

import json

import pytest

from selfsteer.data.prompts import PromptCursor, PromptDataError, PromptRecord, load_prompts

pytestmark = pytest.mark.usefixtures("datasets_cache")  # a private `datasets` cache per test (tests/conftest.py)


ROWS = [{"prompt": "what is 3 plus 4 ?", "uuid": "b-2"},
        {"prompt": "tell a short story about a cat .", "uuid": "a-1"},
        {"prompt": "Ünïcode, \"quotes\" and\nnewlines", "uuid": "c-3"}]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _json(path, rows):
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def _parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


WRITERS = {"jsonl": _jsonl, "json": _json, "parquet": _parquet}


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_loads_in_file_order_with_uuids(tmp_path, fmt):
    path = WRITERS[fmt](tmp_path / f"prompts.{fmt}", ROWS)
    assert load_prompts(path) == [PromptRecord(uid="b-2", index=0, prompt=ROWS[0]["prompt"]),
                                  PromptRecord(uid="a-1", index=1, prompt=ROWS[1]["prompt"]),
                                  PromptRecord(uid="c-3", index=2, prompt=ROWS[2]["prompt"])]


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_row_index_is_the_id_without_uuid_column(tmp_path, fmt):
    rows = [{"prompt": r["prompt"]} for r in ROWS]
    records = load_prompts(WRITERS[fmt](tmp_path / f"prompts.{fmt}", rows))
    assert [(r.uid, r.index, r.prompt) for r in records] == [("0", 0, ROWS[0]["prompt"]), ("1", 1, ROWS[1]["prompt"]),
                                                              ("2", 2, ROWS[2]["prompt"])]


def test_extra_columns_are_ignored_and_uppercase_extension_works(tmp_path):
    path = _jsonl(tmp_path / "P.JSONL", [{"prompt": "hi", "uuid": "u", "source": "x", "n": 3}])
    assert load_prompts(path) == [PromptRecord("u", 0, "hi")]


def test_custom_field_names(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [{"instruction": "hi", "id": 7}, {"instruction": "yo", "id": 9}])
    records = load_prompts(path, prompt_field="instruction", id_field="id")
    assert [(r.uid, r.prompt) for r in records] == [("7", "hi"), ("9", "yo")]


def test_integer_uuids_become_strings(tmp_path):
    records = load_prompts(_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "uuid": 10}, {"prompt": "b", "uuid": 2}]))
    assert [r.uid for r in records] == ["10", "2"]


def test_prompt_text_is_kept_verbatim(tmp_path):
    records = load_prompts(_jsonl(tmp_path / "p.jsonl", [{"prompt": "  padded prompt \n"}]))
    assert records[0].prompt == "  padded prompt \n"


def _error(path, **kwargs) -> str:
    with pytest.raises(PromptDataError) as err:
        load_prompts(path, **kwargs)
    return str(err.value)


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_missing_prompt_column(tmp_path, fmt):
    path = WRITERS[fmt](tmp_path / f"p.{fmt}", [{"text": "hi", "uuid": "u"}])
    msg = _error(path)
    assert msg.startswith(f"{path}: row 0: missing field 'prompt'")
    assert "text" in msg  # lists the columns the file does have


@pytest.mark.parametrize("fmt", sorted(WRITERS))
@pytest.mark.parametrize("empty", ["", "   ", "\n\t"])
def test_empty_prompt_names_row(tmp_path, fmt, empty):
    rows = [{"prompt": "ok"}, {"prompt": "fine"}, {"prompt": empty}, {"prompt": "later"}]
    path = WRITERS[fmt](tmp_path / f"p.{fmt}", rows)
    assert _error(path) == f"{path}: row 2: field 'prompt' is empty"


@pytest.mark.parametrize("value, type_name", [(3, "int"), (None, "NoneType"), (["a"], "list")])
def test_non_string_prompt_names_row_and_type(tmp_path, value, type_name):
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "ok"}, {"prompt": value}])
    msg = _error(path)
    assert msg.startswith(f"{path}: row 1: field 'prompt' must be a string")
    assert msg.endswith(f"got {type_name}")


def test_non_string_prompt_in_parquet(tmp_path):
    path = _parquet(tmp_path / "p.parquet", [{"prompt": 1}, {"prompt": 2}])
    assert _error(path) == f"{path}: row 0: field 'prompt' must be a string, got int"


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_duplicate_uuid_names_both_rows(tmp_path, fmt):
    rows = [{"prompt": "a", "uuid": "x"}, {"prompt": "b", "uuid": "y"}, {"prompt": "c", "uuid": "x"}]
    path = WRITERS[fmt](tmp_path / f"p.{fmt}", rows)
    assert _error(path) == f"{path}: row 2: field 'uuid' duplicates row 0 ('x')"


def test_duplicate_custom_id_field(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "id": 1}, {"prompt": "b", "id": 1}])
    assert _error(path, id_field="id") == f"{path}: row 1: field 'id' duplicates row 0 ('1')"


def test_empty_uuid_names_row(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "uuid": "x"}, {"prompt": "b", "uuid": " "}])
    assert _error(path) == f"{path}: row 1: field 'uuid' is empty"



def test_first_record_without_uuid_gives_row_indices_to_all(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": "b", "uuid": "z"}])
    assert [r.uid for r in load_prompts(path)] == ["0", "1"]

@pytest.mark.parametrize("name", ["p.jsonl", "p.json", "p.parquet"])
def test_empty_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    assert _error(path) == f"{path}: file is empty"


@pytest.mark.parametrize("text, where", [
    ('{"prompt": "a"}\n{"prompt": "b"\n', "line 2: not valid JSON"),
    ('{"prompt": "a"\n', "line 1: not valid JSON"),
    ("not json at all\n", "not valid JSON (a JSON list, object or JSON Lines was expected)"),
])
def test_unparseable_json_names_the_line(tmp_path, text, where):
    path = tmp_path / "p.jsonl"
    path.write_text(text)
    assert _error(path).startswith(f"{path}: {where}")


def test_json_without_rows(tmp_path):
    path = tmp_path / "p.json"
    path.write_text("[]")
    assert _error(path).startswith(f"{path}: ")


def test_unparseable_parquet(tmp_path):
    path = tmp_path / "p.parquet"
    path.write_bytes(b"this is not parquet")
    assert _error(path).startswith(f"{path}: could not be read as parquet")


@pytest.mark.parametrize("name", ["p.csv", "p.txt", "prompts"])
def test_unsupported_extension(tmp_path, name):
    path = tmp_path / name
    path.write_text("prompt\nhi\n")
    msg = _error(path)
    assert msg.startswith(f"{path}: unsupported extension")
    assert "['.json', '.jsonl', '.parquet']" in msg


def test_file_not_found(tmp_path):
    path = tmp_path / "missing.jsonl"
    assert _error(path) == f"{path}: prompts file not found"


def test_directory_is_not_a_prompts_file(tmp_path):
    path = tmp_path / "dir.jsonl"
    path.mkdir()
    assert _error(path) == f"{path}: prompts file not found"


# ---- PromptCursor ----------------------------------------------------------------------------

RECORDS = [PromptRecord(uid=f"u{i}", index=i, prompt=f"p{i}") for i in range(7)]


def _uids(batch):
    return [r.uid for r in batch]


def _walk(cursor, sizes):
    return [_uids(cursor.next_batch(s)) for s in sizes]


def test_cursor_is_deterministic_per_seed():
    sizes = [3, 5, 2, 7, 4]
    assert _walk(PromptCursor(RECORDS, seed=1), sizes) == _walk(PromptCursor(RECORDS, seed=1), sizes)
    assert _walk(PromptCursor(RECORDS, seed=1), sizes) != _walk(PromptCursor(RECORDS, seed=2), sizes)


@pytest.mark.parametrize("seed", [0, 1, 5])
def test_each_epoch_is_a_permutation(seed):
    cursor = PromptCursor(RECORDS, seed=seed)
    epochs = _walk(cursor, [len(RECORDS)] * 4)  # exactly 4 epochs, one batch each
    for epoch in epochs:
        assert sorted(epoch) == sorted(r.uid for r in RECORDS)
    assert len({tuple(e) for e in epochs}) > 1  # reshuffled per epoch, not one fixed order
    assert cursor.state_dict() == {"epoch": 3, "position": 7}


def test_batches_cross_epoch_boundaries():
    cursor = PromptCursor(RECORDS, seed=0)
    first = _uids(cursor.next_batch(5))
    second = _uids(cursor.next_batch(5))  # 2 from epoch 0, then 3 from epoch 1 not already in this batch
    assert sorted(first + second[:2]) == sorted(r.uid for r in RECORDS)
    epoch1 = [RECORDS[i].uid for i in cursor._epoch_order(1)]
    taken = [u for u in epoch1 if u not in second[:2]][:3]
    assert second[2:] == taken  # epoch 1's order, passing over the two this batch already holds
    assert cursor.state_dict() == {"epoch": 1, "position": epoch1.index(taken[-1]) + 1}


def test_batch_larger_than_dataset_is_refused():
    """A round never holds one prompt twice (issue 14): more than the dataset is an error."""
    cursor = PromptCursor(RECORDS[:2], seed=0, shuffle=False)
    with pytest.raises(PromptDataError, match="5 distinct prompts; there are 2"):
        cursor.next_batch(5)
    assert _uids(cursor.next_batch(2)) == ["u0", "u1"]


def test_shuffle_false_keeps_file_order():
    cursor = PromptCursor(RECORDS, seed=123, shuffle=False)
    assert _walk(cursor, [3, 3, 3, 5]) == [["u0", "u1", "u2"], ["u3", "u4", "u5"], ["u6", "u0", "u1"],
                                           ["u2", "u3", "u4", "u5", "u6"]]


def test_state_dict_resumes_to_identical_batches():
    sizes = [3, 4, 6, 2, 5, 7]
    original = PromptCursor(RECORDS, seed=9)
    _walk(original, [3, 4, 6])  # mid-epoch 1
    state = original.state_dict()
    assert state == {"epoch": 1, "position": 6}
    resumed = PromptCursor(RECORDS, seed=9)
    resumed.load_state_dict(json.loads(json.dumps(state)))  # as saved in a checkpoint
    assert _walk(resumed, sizes[3:]) == _walk(original, sizes[3:])


def test_state_dict_at_epoch_boundary_resumes():
    original = PromptCursor(RECORDS, seed=4)
    original.next_batch(len(RECORDS))  # epoch 0 exhausted, epoch 1 not yet drawn
    resumed = PromptCursor(RECORDS, seed=4)
    resumed.load_state_dict(original.state_dict())
    assert _walk(resumed, [3, 7]) == _walk(original, [3, 7])


def test_load_state_dict_accepts_string_integers():
    cursor = PromptCursor(RECORDS, seed=2)
    cursor.load_state_dict({"epoch": "2", "position": "1"})
    assert cursor.state_dict() == {"epoch": 2, "position": 1}
    reference = PromptCursor(RECORDS, seed=2)
    _walk(reference, [len(RECORDS), len(RECORDS), 1])
    assert _uids(cursor.next_batch(3)) == _uids(reference.next_batch(3))


def test_cursor_over_loaded_prompts(tmp_path):
    records = load_prompts(_jsonl(tmp_path / "p.jsonl", [{"prompt": f"q{i}"} for i in range(5)]))
    cursor = PromptCursor(records, seed=0)
    assert sorted(r.index for r in cursor.next_batch(5)) == [0, 1, 2, 3, 4]
