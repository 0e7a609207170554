"""Issue 26, bad input and driver-level faults: each ends in one line and exit status 2 before Ray
starts where it can, and a refused start or resume leaves the run directory as it found it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from selfsteer.cli.main import main
from selfsteer.config.schema import load_config, save_config
from selfsteer.run import checkpoint, preflight, rundir

TINY = str(Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.yaml")


def _run(capsys, *words):
    rc = main(["run", *words])
    return rc, capsys.readouterr().err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("selfsteer: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _snapshot(run_dir: Path) -> dict:
    return {str(p.relative_to(run_dir)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def _finished_run(run_dir: Path, toy_cache, rounds: int = 2, *extra: str) -> dict:
    """A run directory as a finished 2-round tiny run leaves it (its config, keys, state, metrics)."""
    cfg = load_config(TINY, [f"rounds={rounds}", f"output_dir={run_dir}", f"model.cache_dir={toy_cache}", *extra])
    run_dir.mkdir(parents=True)
    save_config(cfg, run_dir / "config.yaml")
    (run_dir / preflight.RUN_KEYS_FILE).write_text(json.dumps(preflight.run_keys(cfg)))
    (run_dir / "schedule.json").write_text(json.dumps({"rounds": [rounds]}))
    (run_dir / "state.json").write_text(json.dumps({"round": rounds, "cursor": {"epoch": 0, "position": 16},
                                                    "trainer_tag": f"round_{rounds:04d}"}))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"round": r, "train/loss": 0.5}) + "\n"
                                                   for r in range(1, rounds + 1)))
    from selfsteer.toy.prompts import write_toy_prompts

    write_toy_prompts(run_dir / "prompts.jsonl", seed=cfg.seed)
    (run_dir / "trainer_state" / f"round_{rounds:04d}").mkdir(parents=True)
    return _snapshot(run_dir)


# --- item 17: late failures become one line, exit 2, before anything is written -----------------

@pytest.mark.parametrize("override, named", [
    ("rollout.max_batch_size=0", "rollout.max_batch_size"),
    ("reference.micro_batch_size=0", "reference.micro_batch_size"),
    ("principles.num_dimensions=50", "principles.num_dimensions=50"),
    ("data.prompt_field=question", "data.prompt_field='question'"),
])
def test_late_failures_are_refused_up_front(tmp_path, capsys, override, named):
    rc, err = _run(capsys, TINY, override, f"output_dir={tmp_path / 'run'}")
    assert rc == 2 and named in _one_line(err), err
    assert not (tmp_path / "run").exists()


def _model_copy(toy_model_path, dest: Path) -> Path:
    shutil.copytree(toy_model_path, dest)
    return dest


class _Marker:
    """Unpickling it creates a file: the harmless stand-in for code planted in a weights file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("case", ["no_weights", "unknown_model_type", "empty_config", "truncated_safetensors",
                                  "malicious_bin"])
def test_a_broken_model_directory_is_named_before_ray(tmp_path, capsys, toy_model_path, case):
    model = _model_copy(toy_model_path, tmp_path / "model")
    marker = tmp_path / "code-ran"
    weights = sorted(model.glob("*.safetensors"))
    if case == "no_weights":
        for f in weights:
            f.unlink()
        named = "holds no weights"
    elif case == "unknown_model_type":
        config = json.loads((model / "config.json").read_text())
        (model / "config.json").write_text(json.dumps({**config, "model_type": "nosuchmodel"}))
        named = "'nosuchmodel'"
    elif case == "empty_config":
        (model / "config.json").write_text("{}")
        named = "no 'model_type'"
    elif case == "truncated_safetensors":
        data = weights[0].read_bytes()
        weights[0].write_bytes(data[: len(data) // 2])
        named = f"{weights[0]} is truncated"
    else:
        for f in weights:
            f.unlink()
        torch.save({"model.embed_tokens.weight": torch.zeros(2), "extra": _Marker(marker)}, model / "pytorch_model.bin")
        named = "needs arbitrary unpickling"
    rc, err = _run(capsys, TINY, f"model.policy={model}", f"output_dir={tmp_path / 'run'}")
    line = _one_line(err)
    assert rc == 2 and "model.policy" in line and named in line, line
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_a_yaml_error_in_the_principle_library_names_file_and_line(tmp_path, capsys):
    lib = tmp_path / "library.yaml"
    lib.write_text("- name: Honesty\n  good: be honest\n  bad: [unclosed\n")
    rc, err = _run(capsys, TINY, f"principles.library_file={lib}", f"output_dir={tmp_path / 'run'}")
    assert rc == 2 and f"{lib}:" in _one_line(err) and "could not be read as yaml" in err, err


def test_run_config_with_resume_says_which_to_give(tmp_path, capsys, toy_cache):
    run_dir = tmp_path / "run"
    before = _finished_run(run_dir, toy_cache)
    rc, err = _run(capsys, TINY, "--resume", str(run_dir))
    line = _one_line(err)
    assert rc == 2 and "its own config" in line and "key=value" not in line.split("or give")[0], line
    assert _snapshot(run_dir) == before


def test_overrides_after_overwrite_are_taken(tmp_path, capsys, toy_cache):
    run_dir = tmp_path / "run"
    before = _finished_run(run_dir, toy_cache)
    # Accepted as an override (argparse used to reject it): refused by the prompt count, and the old
    # run that --overwrite moved aside is back in place.
    rc, err = _run(capsys, TINY, f"output_dir={run_dir}", "--overwrite", "data.prompts_per_round=5000",
                   f"model.cache_dir={toy_cache}")
    assert rc == 2 and "data.prompts_per_round=5000" in _one_line(err), err
    assert _snapshot(run_dir) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]


def test_a_truncated_state_json_is_named_and_left_alone(tmp_path, capsys, toy_cache):
    run_dir = tmp_path / "run"
    _finished_run(run_dir, toy_cache)
    (run_dir / "state.json").write_text('{"round": 2, "cursor": {"epo')
    before = _snapshot(run_dir)
    rc, err = _run(capsys, "--resume", str(run_dir))
    assert rc == 2 and f"{run_dir / 'state.json'} is not a finished round's state" in _one_line(err), err
    assert _snapshot(run_dir) == before


# --- items 11, 14 and 17: a resume cannot change what defines the run, and a refused one writes nothing

@pytest.mark.parametrize("override, key", [("seed=1", "seed"), ("data.prompts=task", "data.prompts"),
                                           ("model.toy.hidden_size=32", "model.toy")])
def test_resume_refuses_a_change_of_run_defining_key(tmp_path, capsys, toy_cache, override, key):
    run_dir = tmp_path / "run"
    before = _finished_run(run_dir, toy_cache)
    rc, err = _run(capsys, "--resume", str(run_dir), "rounds=3", override)
    assert rc == 2 and f"{key} cannot change on resume" in _one_line(err), err
    assert _snapshot(run_dir) == before


def test_an_architecture_edited_into_config_yaml_is_refused_on_resume(tmp_path, capsys, toy_cache):
    run_dir = tmp_path / "run"
    _finished_run(run_dir, toy_cache)
    text = (run_dir / "config.yaml").read_text().replace("hidden_size: 64", "hidden_size: 96")
    assert "hidden_size: 96" in text
    (run_dir / "config.yaml").write_text(text)
    before = _snapshot(run_dir)
    rc, err = _run(capsys, "--resume", str(run_dir))
    assert rc == 2 and "model.toy cannot change on resume" in _one_line(err) and "96" in err, err
    assert _snapshot(run_dir) == before


def test_a_run_from_before_run_keys_is_checked_against_its_config(tmp_path, capsys, toy_cache):
    run_dir = tmp_path / "run"
    _finished_run(run_dir, toy_cache)
    (run_dir / preflight.RUN_KEYS_FILE).unlink()
    before = _snapshot(run_dir)
    rc, err = _run(capsys, "--resume", str(run_dir), "seed=7")
    assert rc == 2 and "seed cannot change on resume (0 when the run started, now 7)" in _one_line(err), err
    assert _snapshot(run_dir) == before


def test_a_resume_the_cluster_cannot_place_rewrites_nothing(ray_local, tmp_path, capsys, toy_cache):
    run_dir = tmp_path / "run"
    before = _finished_run(run_dir, toy_cache)
    rc, err = _run(capsys, "--resume", str(run_dir), "rounds=3", "rollout.num_engines=64")
    assert rc == 2 and "cannot be placed" in _one_line(err), err
    assert _snapshot(run_dir) == before  # config.yaml still says 2 engines, schedule.json has no new segment


# --- item 16: a start refused after the claim leaves no half-made directory -----------------------

def test_a_refused_start_leaves_no_directory_and_the_corrected_one_is_accepted(ray_local, tmp_path, capsys, toy_cache):
    run_dir = tmp_path / "run"
    common = [f"output_dir={run_dir}", f"model.cache_dir={toy_cache}"]
    rc, err = _run(capsys, TINY, "data.prompts_per_round=5000", *common)  # toy prompts are counted late
    assert rc == 2 and "data.prompts_per_round=5000" in _one_line(err) and not run_dir.exists(), err
    rc, err = _run(capsys, TINY, "rollout.num_engines=64", *common)  # refused after Ray started
    assert rc == 2 and "cannot be placed" in _one_line(err) and not run_dir.exists(), err
    cfg = load_config(TINY, common)
    cfg, state, claim = preflight.prepare_run(cfg)  # the corrected start: no "already holds a run"
    claim.undo()
    assert state is None and not run_dir.exists()


def test_a_refused_start_into_an_existing_directory_removes_only_its_own_files(tmp_path, capsys, toy_cache):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    rc, err = _run(capsys, TINY, "data.prompts_per_round=5000", f"output_dir={run_dir}", f"model.cache_dir={toy_cache}")
    assert rc == 2 and sorted(p.name for p in run_dir.iterdir()) == ["notes.txt"], err


# --- item 17: two starts into one new directory at the same moment ----------------------------------

def test_the_second_of_two_simultaneous_starts_is_told_another_run_is_starting(tmp_path, capsys):
    run_dir = tmp_path / "run"
    cfg = load_config(TINY, [f"output_dir={run_dir}"])
    _, _, first = preflight.prepare_run(cfg)  # holds the lock, has written nothing yet
    try:
        rc, err = _run(capsys, TINY, f"output_dir={run_dir}")
        assert rc == 2 and f"another run is starting in {run_dir}" in _one_line(err), err
        assert rundir.is_locked(run_dir)
    finally:
        first.undo()
    assert not run_dir.exists() and not rundir.is_locked(tmp_path)


# --- item 15: a torn last line of metrics.jsonl --------------------------------------------------

def test_resume_repair_drops_a_torn_metrics_line_and_restores_the_round(tmp_path):
    rounds = tmp_path / "rounds"
    for r in (1, 2):
        (rounds / f"round_{r:04d}").mkdir(parents=True)
        (rounds / f"round_{r:04d}" / "metrics.json").write_text(json.dumps({"train/loss": r / 10}))
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"round": 1, "train/loss": 0.1}) + "\n" + '{"round": 2, "train/lo')
    restored = checkpoint.repair_metrics(tmp_path, last_round=2)
    assert restored == {2: {"train/loss": 0.2}}
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"round": 1, "train/loss": 0.1}, {"round": 2, "train/loss": 0.2}]


# --- item 17: disk full -------------------------------------------------------------------------

def test_disk_full_is_recognised_through_wrappers(tmp_path):
    from selfsteer.run.failures import disk_full

    with pytest.raises(OSError) as info:
        with open("/dev/full", "w") as fh:  # a real ENOSPC
            fh.write("x" * 65536)
    assert disk_full(info.value, str(tmp_path)).startswith(f"disk full (ENOSPC) writing under {tmp_path}")
    try:
        try:
            raise info.value
        except OSError as exc:
            raise RuntimeError("trainer rank 0 failed") from exc
    except RuntimeError as wrapped:
        assert "disk full" in disk_full(wrapped)
    actor_text = RuntimeError("ray::TrainerRank.save_state()\nOSError: [Errno 28] No space left on device: '/runs/a/x.pt'")
    assert disk_full(actor_text).startswith("disk full (ENOSPC) writing /runs/a/x.pt")
    assert disk_full(ValueError("no")) is None


def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=16k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs unshare -rm and tmpfs mounts (user namespaces)")
def test_a_full_disk_at_start_is_one_line_naming_the_directory(tmp_path, toy_cache):
    """In a mount namespace the test makes, output_dir is a 16 KiB tmpfs: the toy prompts do not fit."""
    disk = tmp_path / "disk"
    disk.mkdir()
    script = (f"mount -t tmpfs -o size=16k tmpfs {disk} && exec {sys.executable} -m selfsteer.cli.main run {TINY} "
              f"output_dir={disk / 'run'} model.cache_dir={toy_cache}")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = _one_line(proc.stderr)
    assert f"disk full (ENOSPC) writing under {disk / 'run'}" in line, line


# --- item 9: `selfsteer scale` reaches only a run that is going, and the cluster must hold it ----

def _scale(capsys, *words):
    rc = main(["scale", *words])
    return rc, capsys.readouterr()


def test_scale_refuses_what_no_running_run_can_take(tmp_path, capsys, toy_cache):
    cases = [([str(tmp_path / "nowhere"), "--engines", "2"], "no such run directory")]
    (tmp_path / "empty").mkdir()
    cases.append(([str(tmp_path / "empty"), "--engines", "2"], "holds no run"))
    _finished_run(tmp_path / "done", toy_cache)
    cases.append(([str(tmp_path / "done"), "--engines", "2"], "has finished (2 of 2 rounds)"))
    stopped = tmp_path / "stopped"
    _finished_run(stopped, toy_cache, 2)
    save_config(load_config(TINY, ["rounds=5"]), stopped / "config.yaml")
    cases.append(([str(stopped), "--engines", "2"], "no run is going"))
    cases += [([str(stopped), "--engines", n], f"--engines {n}: a run needs at least 1") for n in ("0", "-3")]
    for words, named in cases:
        rc, out = _scale(capsys, *words)
        assert rc == 2 and named in _one_line(out.err), (words, out.err)
        assert not (Path(words[0]) / "control.json").exists()
    claim = rundir.RunDirClaim.acquire(stopped)  # as the running driver holds it
    try:
        rc, out = _scale(capsys, str(stopped), "--engines", "3")
        assert rc == 0 and json.loads((stopped / "control.json").read_text()) == {"num_engines": 3}
    finally:
        claim.release()


def test_a_scale_the_cluster_cannot_place_is_named(ray_local):
    from selfsteer.run.driver import scale_problem

    cfg = load_config(TINY, ["rollout.num_engines=1", "ray.num_cpus=2"])
    assert "rollout.num_engines=64" in scale_problem(cfg, 64, 1) and "cannot be placed" in scale_problem(cfg, 64, 1)
    assert scale_problem(cfg, 1, 1) is None


# --- item 8: the HTTP principle writer refuses a prompt longer than its context ----------------------

def _writer_server(max_chars: int):
    """A real OpenAI-format server on 127.0.0.1 that answers HTTP 400 for prompts over `max_chars`,
    as vLLM does for a prompt longer than its context."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    reply = ("### Bad Guideline\nSkip the reasoning and state a guess without checking any step.\n\n"
             "### Good Guideline\nWork through each step in order and check the result before stating it.")

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._send(200, {"data": [{"id": "writer"}]})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            text = body["messages"][0]["content"]
            if len(text) > max_chars:
                self._send(400, {"error": {"message": f"This model's maximum context length is {max_chars}; "
                                                      f"the request has {len(text)}", "type": "BadRequestError"}})
            else:
                self._send(200, {"choices": [{"message": {"role": "assistant", "content": reply}}]})

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_prompt_too_long_for_the_http_writer_is_skipped_and_recorded(tmp_path, toy_model_path):
    from transformers import AutoTokenizer

    from selfsteer.actors.principle import PrincipleGenerator
    from selfsteer.actors.inputs import Inputs
    from selfsteer.config.sections import LLMPrincipleConfig, PrincipleConfig
    from selfsteer.data.prompts import PromptCursor, PromptRecord
    from selfsteer.principles.prompt import principle_prompt

    short = [PromptRecord(uid=f"s{i}", index=i, prompt=f"what is {i} plus 4 ?") for i in range(3)]
    long_for_writer = PromptRecord(uid="long", index=3, prompt="why is the sky blue ? " * 40)
    too_long_anyway = PromptRecord(uid="huge", index=4, prompt="tell me more . " * 400)  # ~1600 toy tokens
    server = _writer_server(max_chars=len(principle_prompt(short[0].prompt)) + 200)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        writer = PrincipleGenerator(PrincipleConfig(mode="llm", llm=LLMPrincipleConfig(source="http", base_url=url,
                                                                                          http_retries=0)), seed=0)
        tokenizer = AutoTokenizer.from_pretrained(toy_model_path)
        inputs = Inputs(str(toy_model_path), str(toy_model_path), PromptCursor(short, 0), tokenizer, 1000,
                        run_dir=tmp_path)
        prompts, _, skipped_bare = inputs.drop_long([*short, long_for_writer, too_long_anyway], None, 1)
        assert skipped_bare == 1 and too_long_anyway not in prompts  # never sent to the writer
        pairs, stats = writer.generate(prompts, 1)  # used to raise EndpointError: HTTP 400
    finally:
        server.shutdown()
    assert stats["writer_rejected"] == 1  # and counted apart from fallback pairs
    kept, _, skipped = inputs.drop_long(prompts, pairs, 1)
    assert [p.uid for p in kept] == ["s0", "s1", "s2"] and skipped == 1
    rows = [json.loads(line) for line in (tmp_path / "rounds" / "round_0001" / "skipped.jsonl").read_text().splitlines()]
    assert [(r["uuid"], r["reason"]) for r in rows] == [("huge", "too_long"), ("long", "writer_rejected")]
    assert "HTTP 400" in rows[1]["detail"] and "maximum context length" in rows[1]["detail"]
