"""Recipe records: byte-compatible with the recipe's README examples, and every bad input named."""

from __future__ import annotations

import json

import pytest

from selfsteer.recipe.records import (RecordError, conversation, dpo_record, dumps_records, principles_record,
                                      read_records, sso_record, write_records)

# The recipe README's examples (seeds/000), verbatim.
PROMPTS_EXAMPLE = """[
  {
    "prompt": "how can i develop a habit of drawing daily",
    "uuid": "cb71928c-1b78-4ab5-9db9-f6bdd128d942"
  }
]"""

PRINCIPLES_EXAMPLE = """[
  {
    "prompt": "how can i develop a habit of drawing daily",
    "uuid": "cb71928c-1b78-4ab5-9db9-f6bdd128d942",
    "principles": [
      {
        "good_principle": "",
        "bad_principle": ""
      }
    ]
  }
]"""

SSO_EXAMPLE = """[
  {
    "prompt": "",
    "uuid": "de3efad1-9b8a-4ea7-9d54-de406674b668",
    "p_system": "",
    "n_system": "",
    "system": "",
    "chosen": [
      {
        "value": "",
        "from": "human"
      },
      {
        "value": "",
        "from": "gpt"
      }
    ],
    "rejected": [
      {
        "value": "",
        "from": "human"
      },
      {
        "value": "",
        "from": "gpt"
      }
    ],
    "raw": [
      {
        "value": "",
        "from": "human"
      },
      {
        "value": "",
        "from": "gpt"
      }
    ],
    "history": []
  }
]"""

DPO_EXAMPLE = """[
  {
    "prompt": "how can i develop a habit of drawing daily",
    "chosen": [
      {
        "value": "how can i develop a habit of drawing daily",
        "from": "human"
      },
      {
        "value": "",
        "from": "gpt"
      }
    ],
    "rejected": [
      {
        "value": "how can i develop a habit of drawing daily",
        "from": "human"
      },
      {
        "value": "",
        "from": "gpt"
      }
    ],
    "conversations": [
      {
        "value": "how can i develop a habit of drawing daily",
        "from": "human"
      },
      {
        "value": "",
        "from": "gpt"
      }
    ],
    "prompt_id": "cb71928c-1b78-4ab5-9db9-f6bdd128d942"
  }
]"""

EXAMPLES = {"prompts": PROMPTS_EXAMPLE, "principles": PRINCIPLES_EXAMPLE, "sso": SSO_EXAMPLE, "dpo": DPO_EXAMPLE}
DRAWING, UID = "how can i develop a habit of drawing daily", "cb71928c-1b78-4ab5-9db9-f6bdd128d942"


def shape(value):
    """A record's structure: keys in order, list lengths and value types, with the strings blanked."""
    if isinstance(value, dict):
        return [(k, shape(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


# --- builders reproduce the README bytes -------------------------------------------------------

def test_builders_reproduce_the_readme_examples_byte_for_byte():
    assert dumps_records([{"prompt": DRAWING, "uuid": UID}]) == PROMPTS_EXAMPLE
    assert dumps_records([principles_record(DRAWING, UID, "", "")]) == PRINCIPLES_EXAMPLE
    assert dumps_records([sso_record("", "de3efad1-9b8a-4ea7-9d54-de406674b668", "", "", "", "", "")]) == SSO_EXAMPLE
    assert dumps_records([dpo_record(DRAWING, "", "", UID)]) == DPO_EXAMPLE


def test_conversation_keys_are_value_then_from():
    assert json.dumps(conversation("q", "a")) == '[{"value": "q", "from": "human"}, {"value": "a", "from": "gpt"}]'


def test_written_file_is_the_recipes_json_dump(tmp_path):
    records = [principles_record("Ünïcode \"q\"\nline", 7, "gut — good", "schlecht ✗")]
    path = write_records(tmp_path / "sub" / "principles.json", records)
    raw = path.read_bytes()
    # The recipe's own writer: json.dump(data, f, ensure_ascii=False, indent=2), no trailing newline.
    assert raw == json.dumps(records, ensure_ascii=False, indent=2).encode("utf-8")
    assert "Ünïcode".encode() in raw and b"\\u" not in raw and not raw.endswith(b"\n")
    assert not list(tmp_path.glob("sub/.*.tmp"))


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_readme_examples_read_back(tmp_path, kind):
    path = tmp_path / f"{kind}.json"
    path.write_text(EXAMPLES[kind], encoding="utf-8")
    if kind == "sso":  # the README's sso example has an empty prompt; ours refuses to sample or train on one
        with pytest.raises(RecordError, match=r"row 0: field 'prompt' is empty"):
            read_records(path, kind)
        return
    loaded = read_records(path, kind)
    assert len(loaded.records) == 1 and loaded.skipped == 0
    record = loaded.records[0]
    assert record["prompt"] == DRAWING and record[loaded.id_field] == UID


# --- reading through datasets ------------------------------------------------------------------

ROWS = [{"prompt": "what is 3 plus 4 ?", "uuid": "b-2"}, {"prompt": "tell a story .", "uuid": "a-1"}]


def _write(path, rows, fmt):
    if fmt == "json":
        path.write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("fmt", ["json", "jsonl", "parquet"])
def test_every_input_format_reads_in_file_order(tmp_path, fmt):
    loaded = read_records(_write(tmp_path / f"p.{fmt}", ROWS, fmt), "prompts")
    assert [(r["prompt"], r["uuid"], r["row"]) for r in loaded.records] == [
        ("what is 3 plus 4 ?", "b-2", 0), ("tell a story .", "a-1", 1)]


def test_without_ids_in_the_first_record_every_record_gets_its_index(tmp_path):
    rows = [{"prompt": "a"}, {"prompt": "b", "uuid": "x"}]
    loaded = read_records(_write(tmp_path / "p.json", rows, "json"), "prompts")
    assert [r["uuid"] for r in loaded.records] == [0, 1]


def test_integer_ids_stay_integers(tmp_path):
    rows = [principles_record("a", 0, "g", "b"), principles_record("b", 1, "g", "b")]
    loaded = read_records(_write(tmp_path / "p.json", rows, "json"), "principles")
    assert [r["uuid"] for r in loaded.records] == [0, 1]


# --- bad input: file, row and field named --------------------------------------------------------

def _bad(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name,text,kind,message", [
    ("empty.json", "", "prompts", r"file is empty"),
    ("blank.jsonl", "  \n\n", "prompts", r"file is empty"),
    ("list.json", "[]", "prompts", r"no records"),
    ("broken.json", '[\n  {"prompt": "a", "uuid": "1"},\n  {"prompt": "b" "uuid": "2"}\n]', "prompts",
     r"line 3: not valid JSON"),
    ("broken.jsonl", '{"prompt": "a", "uuid": "1"}\n{"prompt": "b", "uuid": \n', "prompts", r"line 2: not valid JSON"),
    ("text.json", "prompt,uuid\nhello,1\n", "prompts", r"not valid JSON"),
    ("scalars.json", "[1, 2]", "prompts", r"row 0: missing field .prompt."),
    ("noprompt.json", '[{"uuid": "1"}]', "prompts", r"row 0: missing field 'prompt'"),
    ("nullprompt.json", '[{"prompt": "a", "uuid": "1"}, {"uuid": "2"}]', "prompts",
     r"row 1: field 'prompt' is missing"),
    ("intprompt.json", '[{"prompt": "a", "uuid": "1"}, {"prompt": 5, "uuid": "2"}]', "prompts",
     r"row 1: field 'prompt' must be a string, got int"),
    ("emptyprompt.json", '[{"prompt": "a", "uuid": "1"}, {"prompt": "  ", "uuid": "2"}]', "prompts",
     r"row 1: field 'prompt' is empty"),
    ("dup.json", '[{"prompt": "a", "uuid": "1"}, {"prompt": "b", "uuid": "2"}, {"prompt": "c", "uuid": "1"}]',
     "prompts", r"row 2: field 'uuid' duplicates row 0"),
    ("floatid.json", '[{"prompt": "a", "uuid": "1"}, {"prompt": "b", "uuid": 2.5}]', "prompts",
     r"row 1: field 'uuid' must be a string or an integer, got float"),
    ("emptyid.json", '[{"prompt": "a", "uuid": "1"}, {"prompt": "b", "uuid": ""}]', "prompts",
     r"row 1: field 'uuid' is missing or empty"),
    ("pstring.json", '[{"prompt": "a", "uuid": "1", "principles": "be good"}]', "principles",
     r"row 0: field 'principles' must be a non-empty list"),
    ("pmissing.json", '[{"prompt": "a", "uuid": "1", "principles": [{"good_principle": "g"}]}]', "principles",
     r"row 0: field 'principles\[0\].bad_principle' is missing"),
    ("nopr.json", '[{"prompt": "a", "uuid": "1"}]', "principles",
     r"row 0: missing field 'principles'.*principles file"),
    ("chosen.json", json.dumps([{**dpo_record("q", "a", "b", "1"), "chosen": "just text"}]), "dpo",
     r"row 0: field 'chosen' must be \[.*got str"),
    ("roles.json", json.dumps([{**dpo_record("q", "a", "b", "1"),
                                 "rejected": [{"value": "q", "from": "gpt"}, {"value": "b", "from": "human"}]}]),
     "dpo", r"row 0: field 'rejected' .*found from='gpt' where 'human' belongs"),
    ("nosys.json", json.dumps([{k: v for k, v in sso_record("q", "1", "p", "n", "a", "b", "c").items()
                                if k != "n_system"}]), "sso", r"row 0: missing field 'n_system'"),
])
def test_bad_input_names_file_row_and_field(tmp_path, name, text, kind, message):
    path = _bad(tmp_path, name, text)
    with pytest.raises(RecordError, match=message) as info:
        read_records(path, kind)
    assert str(info.value).startswith(str(path))


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(RecordError, match="file not found"):
        read_records(tmp_path / "nope.json", "prompts")
    path = _bad(tmp_path, "p.csv", "prompt\nhello\n")
    with pytest.raises(RecordError, match=r"unsupported extension '\.csv'"):
        read_records(path, "prompts")


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"prompt": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(RecordError, match=str(path)):
        read_records(path, "prompts")


def test_skip_bad_counts_skipped_rows_and_keeps_the_rest(tmp_path, caplog):
    rows = ('[{"prompt": "a", "uuid": "1"}, {"prompt": 5, "uuid": "2"}, {"uuid": "3"}, {"prompt": "d", "uuid": "1"},'
            ' {"prompt": "e", "uuid": "5"}]')
    loaded = read_records(_bad(tmp_path, "p.json", rows), "prompts", skip_bad=True)
    assert loaded.skipped == 3
    assert [r["uuid"] for r in loaded.records] == ["1", "5"]
    assert "skipped 3 bad row(s) of 5" in caplog.text


def test_skip_bad_still_stops_on_an_unreadable_file_or_nothing_usable(tmp_path):
    with pytest.raises(RecordError, match="not valid JSON"):
        read_records(_bad(tmp_path, "p.jsonl", '{"prompt": \n'), "prompts", skip_bad=True)
    with pytest.raises(RecordError, match=r"no usable rows \(2 skipped\)"):
        read_records(_bad(tmp_path, "q.json", '[{"prompt": 1, "uuid": "1"}, {"prompt": 2, "uuid": "2"}]'), "prompts",
                     skip_bad=True)
