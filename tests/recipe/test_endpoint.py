"""The HTTP principle source against a real OpenAI-compatible server on 127.0.0.1 (`selfsteer serve`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from selfsteer.engines.base import Sampling
from selfsteer.principles.endpoint import ChatEndpoint, EndpointError

from .conftest import write_prompts

KEY_VAR = "SELFSTEER_TEST_PRINCIPLE_KEY"
KEY = "sk-test-7c1e0f"  # a throwaway key for the local test server


def _free_port() -> int:
    from selfsteer.sync.collective import free_port

    return free_port("127.0.0.1")


@pytest.fixture(scope="module")
def toy_1024(toy_cache):
    """The toy model with room for the v2 principle prompt (~540 toy tokens), as recipe_tiny_cpu.yaml builds it."""
    from selfsteer.toy import build_toy_model

    return build_toy_model(toy_cache, max_position_embeddings=1024)


@pytest.fixture(scope="module")
def server(toy_1024):
    """`selfsteer serve` in a subprocess on a free loopback port; yields its base URL."""
    env = {**os.environ, KEY_VAR: KEY}
    proc = subprocess.Popen(
        [sys.executable, "-m", "selfsteer.cli.recipe", "serve", "--model", str(toy_1024), "--port", "0",
         "--served-model-name", "toy", "--api-key-env", KEY_VAR, "--threads", "1", "--log-level", "WARNING"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline, lines = time.monotonic() + 300, []
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                raise RuntimeError("selfsteer serve exited:\n" + "".join(lines))
            lines.append(line)
            if line.startswith("selfsteer serve: http://"):
                url = line.split()[2]
                assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
                yield url
                return
        raise TimeoutError("selfsteer serve did not start:\n" + "".join(lines))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv(KEY_VAR, KEY)


# --- client against the real server ----------------------------------------------------------

@pytest.mark.slow
def test_models_and_batched_completions(server, key_env):
    client = ChatEndpoint(server, api_key_env=KEY_VAR, max_concurrency=4)
    assert client.model_name() == "toy"
    texts = [f"what is {i} plus 4 ?" for i in range(6)]
    replies = client.complete(texts, Sampling(temperature=0.7, top_p=0.8, max_new_tokens=8, seed=3))
    assert len(replies) == 6 and all(isinstance(r, str) for r in replies)
    greedy = Sampling(temperature=0.0, top_p=1.0, max_new_tokens=8)
    assert client.complete(texts[:2], greedy) == client.complete(texts[:2], greedy)


@pytest.mark.slow
def test_stop_strings_cut_the_reply(server, key_env):
    client = ChatEndpoint(server, api_key_env=KEY_VAR)
    greedy = Sampling(temperature=0.0, top_p=1.0, max_new_tokens=12)
    full = client.chat("tell a short story about a cat .", greedy)
    words = full.split()
    assert len(words) >= 3, full
    stop = " " + words[2]
    cut = client.chat("tell a short story about a cat .", Sampling(0.0, 1.0, 12, stop=(stop,)))
    assert cut == full[:full.index(stop)]


@pytest.mark.slow
def test_a_wrong_or_missing_key_is_refused_and_never_printed(server, monkeypatch):
    monkeypatch.setenv(KEY_VAR, "sk-wrong-key-123")
    with pytest.raises(EndpointError, match=r"refused the request \(HTTP 401\)") as info:
        ChatEndpoint(server, api_key_env=KEY_VAR).model_name()
    assert "sk-wrong-key-123" not in str(info.value)
    with pytest.raises(EndpointError, match="HTTP 401"):
        ChatEndpoint(server).model_name()  # no key at all
    with pytest.raises(EndpointError, match="SELFSTEER_UNSET_VAR.*not set"):
        ChatEndpoint(server, api_key_env="SELFSTEER_UNSET_VAR").model_name()


@pytest.mark.slow
def test_server_answers_bad_requests_in_openai_format(server):
    import requests

    auth = {"Authorization": f"Bearer {KEY}"}
    url = f"{server}/chat/completions"
    hi = [{"role": "user", "content": "hi"}]
    cases = [({"messages": []}, 400, "messages"), ({"messages": hi, "n": 2}, 400, "'n'"),
             ({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}, 404, "gpt-9"),
             ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}, 400, "max_tokens")]
    for body, status, needle in cases:
        response = requests.post(url, json=body, headers=auth, timeout=60)
        assert response.status_code == status, (body, response.text)
        assert needle in response.json()["error"]["message"]
    assert requests.post(url, data="{not json", headers=auth, timeout=60).status_code == 400
    ok = requests.post(url, json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}, headers=auth,
                       timeout=60).json()
    assert ok["object"] == "chat.completion" and ok["choices"][0]["message"]["role"] == "assistant"
    assert ok["usage"]["completion_tokens"] <= 4
    assert requests.get(server.replace("/v1", "/health"), timeout=60).json() == {"status": "ok"}


def test_unreachable_endpoint_fails_fast_with_a_clear_error():
    url = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there
    client = ChatEndpoint(url, retries=1, timeout_s=5, backoff_s=0.05)
    start = time.monotonic()
    with pytest.raises(EndpointError, match=rf"{url}/models is unreachable after 2 attempt\(s\).*selfsteer serve"):
        client.complete(["hello"], Sampling())
    assert time.monotonic() - start < 20


def test_request_validation_without_a_server():
    from selfsteer.tools.serve import BadRequest, parse_request
    from selfsteer.toy import build_tokenizer

    tok = build_tokenizer()
    ids, sampling = parse_request({"messages": [{"role": "user", "content": "hello"}], "stop": "###", "seed": 4,
                                   "temperature": 0, "max_tokens": 5}, tok, "toy", 512)
    assert ids == tok(tok.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=False,
                                              add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    assert sampling == Sampling(temperature=0.0, top_p=1.0, max_new_tokens=5, stop=("###",), seed=4)
    for body, needle in [([], "JSON object"), ({"messages": "hi"}, "messages"),
                         ({"messages": [{"role": "user"}]}, "messages"),
                         ({"messages": [{"role": "user", "content": "x"}], "stream": True}, "stream"),
                         ({"messages": [{"role": "user", "content": "x"}], "top_p": 0}, "top_p"),
                         ({"messages": [{"role": "user", "content": "x " * 600}]}, "context is 512")]:
        with pytest.raises(BadRequest, match=needle):
            parse_request(body, tok, "toy", 512)


# --- the principles phase over HTTP (the actor's `http` source) -------------------------------

@pytest.mark.slow
def test_principles_phase_through_the_http_source(server, tmp_path, toy_cache):
    prompts = write_prompts(tmp_path / "prompts.json", 6)
    out = tmp_path / "principles.json"
    args = [sys.executable, "-m", "selfsteer.cli.recipe", "principles", "--config", "configs/recipe_tiny_cpu.yaml",
            "--input", str(prompts), "--output", str(out), f"model.cache_dir={toy_cache}",
            "principles.llm.source=http", f"principles.llm.base_url={server}", f"principles.llm.api_key_env={KEY_VAR}",
            "principles.llm.http_retries=1", "ray.num_cpus=1"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900, env={**os.environ, KEY_VAR: KEY})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert KEY not in proc.stdout + proc.stderr
    records = json.loads(out.read_text())
    assert [r["uuid"] for r in records] == [r["uuid"] for r in json.loads(prompts.read_text())]
    assert all(list(r) == ["prompt", "uuid", "principles"] for r in records)
    summary = proc.stdout.strip().splitlines()[-1]
    assert "requests=" in summary and "fallbacks=" in summary  # two calls per prompt at least, counted


def test_principles_phase_with_an_unreachable_endpoint_stops_before_any_actor(tmp_path, toy_cache):
    prompts = write_prompts(tmp_path / "prompts.json", 2)
    url = f"http://127.0.0.1:{_free_port()}/v1"
    args = [sys.executable, "-m", "selfsteer.cli.recipe", "principles", "--config", "configs/recipe_tiny_cpu.yaml",
            "--input", str(prompts), "--output", str(tmp_path / "out.json"), f"model.cache_dir={toy_cache}",
            "principles.llm.source=http", f"principles.llm.base_url={url}", "principles.llm.http_retries=0"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"principle endpoint {url}/models is unreachable" in proc.stderr
    assert not (tmp_path / "out.json").exists()


# --- secrets: a whole run with the HTTP source writes the key nowhere ---------------------------

@pytest.mark.slow
def test_a_run_with_the_http_source_never_writes_or_prints_the_key(server, tmp_path, toy_cache):
    out, refused_out = tmp_path / "run", tmp_path / "refused"
    secret = "sk-run-secret-5f3a9d2e71"  # distinctive: any hit is a leak, not a coincidence
    args = [sys.executable, "-m", "selfsteer.cli.main", "run", "configs/tiny_cpu.yaml",
            f"model.cache_dir={toy_cache}", "rounds=1", "data.prompts_per_round=2", "rollout.num_engines=1",
            "rollout.sampling.max_new_tokens=8", "tensorboard=true",
            "principles.mode=llm", "principles.llm.source=http", f"principles.llm.base_url={server}",
            f"principles.llm.api_key_env={KEY_VAR}", "principles.llm.http_retries=1",
            # The toy model writes word salad; with the reply screen off every reply counts as written.
            "principles.llm.min_words=0", "principles.llm.reject_answers=false"]
    # The server accepts KEY; the run sends `secret`, is refused (401) and must say so without echoing it.
    # Then with the right key: a finished run, with checkpoints, metrics and TensorBoard events.
    # Each run its own directory: a directory that holds a run is refused without --resume/--overwrite.
    refused = subprocess.run(args + [f"output_dir={refused_out}"], capture_output=True, text=True, timeout=600,
                             env={**os.environ, KEY_VAR: secret})
    assert refused.returncode != 0 and "HTTP 401" in refused.stderr, refused.stderr[-3000:]
    assert secret not in refused.stdout + refused.stderr
    proc = subprocess.run(args + [f"output_dir={out}"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, KEY_VAR: KEY})
    assert proc.returncode == 0, proc.stderr[-4000:]
    files = [p for p in out.rglob("*") if p.is_file()]
    refused_files = [p for p in refused_out.rglob("*") if p.is_file()]
    kinds = {p.name.split(".")[0] for p in files}
    assert {"config", "metrics", "state", "model"} <= kinds | {p.suffix.lstrip(".") for p in files}, kinds
    assert any("tfevents" in p.name for p in files) and any(p.suffix == ".safetensors" for p in files)
    for needle in (KEY, secret):
        assert needle not in proc.stdout + proc.stderr
        leaks = [str(p) for p in files + refused_files if needle.encode() in p.read_bytes()]
        assert not leaks, f"API key written to {leaks}"
    assert f"api_key_env: {KEY_VAR}" in (out / "config.yaml").read_text()  # the variable's name, never its value
    metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["principles/requests"] >= 2 and metrics["principles/fallbacks"] == 0  # the key was really used
