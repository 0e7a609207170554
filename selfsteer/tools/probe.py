"""`selfsteer probe`: can this policy be steered by these principles? Measured before any run.

SSO's premise is a policy its principles steer: y+ sampled under the good principle (x+) must
differ from y- sampled under the bad one (x-), or the pairs carry no preference. For every
dimension of the config's principle library the probe samples, on the same prompts, an answer with
no principle, one under x+ and one under x-, and reports

- the log-prob steering gap of the policy's own answers, in nats per response token:
  A(y+|x+) - A(y+|x-) and A(y-|x-) - A(y-|x+) (A = mean token log-prob), with their spread over
  prompts (the run logs the first as `signal/gap_chosen`);
- where the dimension names a program check (`check:` in the library), the compliance rate under
  none / good / bad and the share of prompts whose y+ and y- are identical;
- the share of answers that stay on the question under none / good / bad (cosine similarity of
  question and answer under the packaged MiniLM encoder, on topic at or above the 5th percentile
  of the unprompted answers' cosines), where the `algos` extra is installed;
- a verdict, steers / barely / not at all, with the thresholds of
  `selfsteer.algorithms.diagnostics.steer_verdict`, or "derails" where the good principle costs
  0.2 or more of the on-topic share: its y+ answers would teach the model to talk past the question.

Generation is local HF `generate` with the run's sampling settings (no Ray). Writes probe.json,
probe.md and probe.png to the output directory; `dimensions` probes a subset and merges it into an
existing probe.json of the same settings, so a long probe can be done in parts.
"""

from __future__ import annotations

import json
import logging
import random
import statistics
import time
from pathlib import Path
from typing import Optional

import torch

from selfsteer.algorithms import diagnostics as D
from selfsteer.utils.io import write_json, write_text

logger = logging.getLogger(__name__)


def prompt_rows(cfg, n: int, seed: int = 0) -> list[dict]:
    """`n` rows of the config's prompts file (every field kept: checks read them), drawn with `seed`."""
    from selfsteer.data.prompts import PromptDataError
    from selfsteer.data.tables import read_table

    if cfg.data.prompts in ("toy", "task"):
        raise ValueError(f"data.prompts={cfg.data.prompts!r}: the probe reads a prompts file; "
                         "set data.prompts to a .json/.jsonl/.parquet file")
    path = Path(cfg.data.prompts)
    rows = read_table(path, PromptDataError, missing="prompts file not found", unit="rows").to_list()
    field = cfg.data.prompt_field
    for i, row in enumerate(rows):
        if not isinstance(row.get(field), str) or not row[field].strip():
            raise PromptDataError(f"{path}: row {i}: field {field!r} must be a non-empty string")
    order = list(range(len(rows)))
    random.Random(f"probe:{seed}").shuffle(order)
    return [{**rows[i], "prompt": rows[i][field]} for i in order[:n]]


def mean_logps(model, contexts: list[list[int]], responses: list[list[int]], pad_id: int,
               batch_size: int = 16) -> list[float]:
    """A(y|c): the mean log-prob per response token of each (context, response) row."""
    from selfsteer.algorithms.logprobs import score_sequences

    with torch.no_grad():
        sums, counts = score_sequences(model, contexts, responses, pad_id=pad_id, device=model.device,
                                       micro_batch_size=batch_size)
    return (sums.double() / counts.double().clamp(min=1)).tolist()


def encoder_cosines():
    """`cosines(questions, answers)` under the packaged MiniLM encoder, or None without the `algos` extra."""
    import importlib.util

    try:
        if importlib.util.find_spec("sentence_transformers") is None:
            raise ImportError("sentence-transformers is not installed")
        from selfsteer.actors.embedding import default_encoder_path

        default_encoder_path()
    except Exception as exc:  # noqa: BLE001 - an optional measure: say why it is missing, go on
        logger.warning("probe: no on-topic measure (%s); install selfsteer[algos] for it", exc)
        return None
    from selfsteer.actors.embedding import qa_cosines

    return qa_cosines


def summarize(name: str, check: Optional[str], a: dict[str, list[float]], texts: dict[str, list[str]],
              passed: Optional[dict[str, list[bool]]], on_topic: Optional[dict[str, list[bool]]] = None) -> dict:
    """One dimension's row from per-prompt A values and answers.

    Args:
        a: per-prompt A(y|c) lists under keys chosen_pos, chosen_neg, rejected_neg, rejected_pos
            (y+ = chosen, y- = rejected; pos/neg = scored under the good / bad principle).
        texts: answers under keys none, good, bad.
        passed: per-prompt check results under keys none, good, bad, or None without a check.
        on_topic: per-prompt "answer stays on the question" under keys none, good, bad, or None.
    """
    gap_chosen = [p - n for p, n in zip(a["chosen_pos"], a["chosen_neg"])]
    gap_rejected = [n - p for n, p in zip(a["rejected_neg"], a["rejected_pos"])]
    gap = [(c + r) / 2 for c, r in zip(gap_chosen, gap_rejected)]
    n = len(gap)
    sd = statistics.stdev(gap) if n > 1 else 0.0
    qs = statistics.quantiles(gap, n=10) if n > 1 else [gap[0]] * 9
    row = {"dimension": name, "check": check, "prompts": n,
           "gap_chosen": statistics.fmean(gap_chosen), "gap_rejected": statistics.fmean(gap_rejected),
           "gap": statistics.fmean(gap), "gap_sd": sd, "gap_se": sd / n ** 0.5, "gap_p10": qs[0], "gap_p90": qs[-1],
           "identical": sum(g.strip() == b.strip() for g, b in zip(texts["good"], texts["bad"])) / n,
           "identical_to_none": sum(g.strip() == o.strip() for g, o in zip(texts["good"], texts["none"])) / n}
    delta = None
    if passed is not None:
        rates = {k: sum(v) / n for k, v in passed.items()}
        delta = rates["good"] - rates["bad"]
        row.update({f"compliance_{k}": v for k, v in rates.items()}, compliance_delta=delta)
    row["verdict"] = D.steer_verdict(row["gap"], delta)
    if on_topic is not None:
        row.update({f"on_topic_{k}": sum(v) / n for k, v in on_topic.items()})
        if D.derails(row["on_topic_none"], row["on_topic_good"]):
            row["verdict"] = D.DERAILS
    return row


def run_probe(cfg, n_prompts: int = 16, out_dir: Optional[str | Path] = None, dimensions: Optional[list[str]] = None,
              seed: int = 0, batch_size: int = 16, max_new_tokens: Optional[int] = None,
              placement: str = "system") -> dict:
    """Probe every (or the named) library dimension of `cfg` on `n_prompts` prompts; write the report.

    `placement`: where the principle text goes, as `principles.placement` puts it in runs: "system"
    (the system prompt), "user" (after the user's question) or "user_before" (before it).

    Raises:
        ValueError: an unknown dimension or check name, or an unusable prompts file (the message
            names the file, row and field); FileNotFoundError: no such model directory.
    """
    from selfsteer.actors.inputs import resolve_model
    from selfsteer.benchmark.realbench.rules import resolve_check
    from selfsteer.data.chat import encode_chat
    from selfsteer.engines.base import Sampling
    from selfsteer.engines.hf_engine import HFBackend
    from selfsteer.principles.library import BUILTIN_LIBRARY, compose_system, load_library

    library = load_library(cfg.principles.library_file) if cfg.principles.library_file else BUILTIN_LIBRARY
    dims = list(library)
    if dimensions:
        known = {d.name.lower(): d for d in library}
        missing = [x for x in dimensions if x.lower() not in known]
        if missing:
            raise ValueError(f"unknown dimension(s) {missing}; the library has {[d.name for d in library]}")
        dims = [known[x.lower()] for x in dimensions]
    checks = {d.name: resolve_check(d.check) for d in dims if d.check}
    rows = prompt_rows(cfg, n_prompts, seed)
    model_dir = resolve_model(cfg)
    engine = HFBackend(model_dir, dtype=getattr(torch, cfg.model.dtype), max_batch_size=batch_size)
    tok, model, pad = engine.tokenizer, engine.model, engine.pad_id
    s = cfg.rollout.sampling
    sampling = Sampling(temperature=s.temperature, top_p=s.top_p, max_new_tokens=max_new_tokens or s.max_new_tokens,
                        seed=seed)
    n = len(rows)
    settings = {"settings": {"model": str(model_dir), "prompts_file": str(cfg.data.prompts), "prompts": n, "seed": seed,
                             "library": cfg.principles.library_file or "built-in",
                             "template": cfg.principles.system_template, "temperature": sampling.temperature,
                             "top_p": sampling.top_p, "max_new_tokens": sampling.max_new_tokens,
                             "placement": placement},
                "thresholds": thresholds()}
    ctx_none = [encode_chat(tok, r["prompt"], None) for r in rows]
    none = engine.generate(ctx_none, [sampling] * n)
    cosines = encoder_cosines()
    questions = [r["prompt"] for r in rows]
    if cosines is not None:
        cos_none = cosines(questions, [g.text for g in none])
        cutoff = D.on_topic_threshold(cos_none)
        settings["settings"]["on_topic_cosine"] = round(cutoff, 4)
    results = []
    for d in dims:
        logger.info("probe: dimension %s (%d prompts)", d.name, n)
        good_sys = compose_system([d], True, cfg.principles.system_template)
        bad_sys = compose_system([d], False, cfg.principles.system_template)
        ctx_pos = [_context(tok, r["prompt"], good_sys, placement) for r in rows]
        ctx_neg = [_context(tok, r["prompt"], bad_sys, placement) for r in rows]
        gens = engine.generate(ctx_pos + ctx_neg, [sampling] * (2 * n))
        good, bad = gens[:n], gens[n:]
        y_pos, y_neg = [g.token_ids for g in good], [g.token_ids for g in bad]
        scores = mean_logps(model, ctx_pos + ctx_neg + ctx_neg + ctx_pos, y_pos + y_pos + y_neg + y_neg, pad, batch_size)
        a = {k: scores[i * n:(i + 1) * n] for i, k in enumerate(("chosen_pos", "chosen_neg", "rejected_neg", "rejected_pos"))}
        texts = {"none": [g.text for g in none], "good": [g.text for g in good], "bad": [g.text for g in bad]}
        passed = None
        if d.name in checks:
            passed = {k: [bool(checks[d.name](r, t)) for r, t in zip(rows, v)] for k, v in texts.items()}
        on_topic = None
        if cosines is not None:
            cos = {"none": cos_none, "good": cosines(questions, texts["good"]), "bad": cosines(questions, texts["bad"])}
            on_topic = {k: [c >= cutoff for c in v] for k, v in cos.items()}
        row = summarize(d.name, d.check, a, texts, passed, on_topic)
        row["examples"] = [{"prompt": rows[i]["prompt"], **{k: texts[k][i] for k in texts}} for i in range(min(2, n))]
        results.append(row)
        logger.info("probe: %s gap %.3f nats/token, verdict %s", d.name, row["gap"], row["verdict"])
        if out_dir is not None:  # after every dimension: an interrupted probe keeps what it measured
            write_report({**settings, "dimensions": [row]}, Path(out_dir))
    report = {**settings, "dimensions": results}
    return report if out_dir is None else json.loads((Path(out_dir) / "probe.json").read_text())


def _context(tokenizer, prompt: str, principle: str, placement: str) -> list[int]:
    from selfsteer.data.chat import encode_chat, place_principle

    return encode_chat(tokenizer, *place_principle(prompt, principle, placement))


def thresholds() -> dict:
    return {"gap_steers": D.GAP_STEERS, "gap_barely": D.GAP_BARELY, "compliance_steers": D.COMPLIANCE_STEERS,
            "compliance_barely": D.COMPLIANCE_BARELY, "on_topic_percentile": D.ON_TOPIC_PERCENTILE,
            "derail_drop": D.DERAIL_DROP}


def write_report(report: dict, out: Path) -> dict:
    """probe.json (merged with an earlier partial probe of the same settings), probe.md, probe.png."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "probe.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("settings") == report["settings"]:
            names = {r["dimension"] for r in report["dimensions"]}
            report = {**report, "dimensions": [r for r in old["dimensions"] if r["dimension"] not in names]
                      + report["dimensions"]}
        else:  # another probe's results: kept beside, never overwritten
            kept = path.with_name(f"probe.{time.strftime('%Y%m%d-%H%M%S')}.json")
            path.replace(kept)
            differ = sorted(k for k in {**old.get("settings", {}), **report["settings"]}
                            if old.get("settings", {}).get(k) != report["settings"].get(k))
            logger.warning("probe: %s holds a probe with other settings (%s); moved to %s", path, ", ".join(differ), kept)
    write_json(path, report)
    write_text(out / "probe.md", table(report))
    plot(report, out / "probe.png")
    return report


def table(report: dict) -> str:
    s, t = report["settings"], report["thresholds"]
    lines = [f"Steerability probe: `{s['model']}`, {s['prompts']} prompts from `{s['prompts_file']}`, library "
             f"`{s['library']}` (template {s['template']}, principle in the {s.get('placement', 'system')} turn), T={s['temperature']} top_p={s['top_p']}, "
             f"{s['max_new_tokens']} new tokens, seed {s['seed']}.", "",
             "| dimension | check | gap y+ | gap y- | gap (mean ± sd, p10..p90) | compliance none / good / bad | "
             "good - bad | on topic none / good / bad | y+ = y- | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["dimensions"]:
        comp = (f"{r['compliance_none']:.2f} / {r['compliance_good']:.2f} / {r['compliance_bad']:.2f}"
                if r.get("check") else "-")
        delta = f"{r['compliance_delta']:+.2f}" if r.get("check") else "-"
        topic = (f"{r['on_topic_none']:.2f} / {r['on_topic_good']:.2f} / {r['on_topic_bad']:.2f}"
                 if "on_topic_good" in r else "-")
        lines.append(f"| {r['dimension']} | {r.get('check') or '-'} | {r['gap_chosen']:+.3f} | {r['gap_rejected']:+.3f} | "
                     f"{r['gap']:+.3f} ± {r['gap_sd']:.3f} ({r['gap_p10']:+.2f}..{r['gap_p90']:+.2f}) | {comp} | {delta} | {topic} | "
                     f"{r['identical']:.2f} | {r['verdict']} |")
    lines += ["", f"Gaps in nats per response token (y+ under good vs bad principle; y- under bad vs good). Verdict: "
              f"with a check, good - bad compliance >= {t['compliance_steers']} steers, >= {t['compliance_barely']} "
              f"barely; without one, gap >= {t['gap_steers']} steers, >= {t['gap_barely']} barely; else not at all. "
              f"On topic: cosine(question, answer) >= {s.get('on_topic_cosine', '-')} (the unprompted answers' "
              f"{t.get('on_topic_percentile', D.ON_TOPIC_PERCENTILE)}th percentile); \"derails\": the good principle's on-topic "
              f"share {t.get('derail_drop', D.DERAIL_DROP)} or more below the unprompted one, whatever the compliance."]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["dimensions"]
    names = [r["dimension"] for r in rows]
    xs = range(len(rows))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    ax1.bar(xs, [r["gap"] for r in rows], yerr=[r["gap_sd"] for r in rows], capsize=3, color="tab:blue")
    for y, style in ((report["thresholds"]["gap_steers"], "--"), (report["thresholds"]["gap_barely"], ":")):
        ax1.axhline(y, color="grey", ls=style)
    ax1.set_xticks(list(xs), names, rotation=30, ha="right", fontsize=8)
    ax1.set_ylabel("steering gap, nats/token (± sd)")
    for k, (key, color) in enumerate((("none", "tab:grey"), ("good", "tab:green"), ("bad", "tab:red"))):
        ax2.bar([x + (k - 1) * 0.27 for x in xs], [r.get(f"compliance_{key}", 0.0) for r in rows], 0.27,
                color=color, label=key)
    ax2.set_xticks(list(xs), [f"{r['dimension']}\n{r['verdict']}" for r in rows], rotation=30, ha="right", fontsize=8)
    ax2.set_ylabel("check compliance (0 = no check)")
    ax2.set_ylim(0, 1)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
