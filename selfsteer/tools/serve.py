"""`selfsteer serve`: a small OpenAI-compatible chat-completions server over the HF generation backend.

For writing principles with a model that should not share the trainer's devices, where vLLM's own
server (`vllm serve`, the better choice where installed) is not: it serves one local HF model
directory through `HFBackend`, the rollout engines' portable backend. Concurrent requests are
gathered into one batched `generate` call. Bound to 127.0.0.1 unless told otherwise.

    GET  /health                 {"status": "ok"}
    GET  /v1/models              {"object": "list", "data": [{"id": NAME, "object": "model", ...}]}
    POST /v1/chat/completions    messages, max_tokens (or max_completion_tokens), temperature, top_p,
                                 stop, seed; n = 1 and no streaming
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Optional

from selfsteer.engines.base import Sampling

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 256


class BadRequest(ValueError):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class _Job:
    prompt_ids: list[int]
    sampling: Sampling
    future: asyncio.Future


def parse_request(body, tokenizer, served_name: str, max_len: int) -> tuple[list[int], Sampling]:
    """A chat-completions request body -> (context token ids, sampling); BadRequest names the field."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != served_name:
        raise BadRequest(f"The model `{model}` does not exist; this server serves `{served_name}`.", 404)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise BadRequest("'messages' must be a non-empty list of {\"role\": str, \"content\": str}")
    if body.get("stream"):
        raise BadRequest("'stream' is not supported")
    if body.get("n", 1) != 1:
        raise BadRequest("'n' must be 1")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens")) or DEFAULT_MAX_TOKENS
    temperature, top_p = body.get("temperature", 1.0), body.get("top_p", 1.0)
    stop, seed = body.get("stop") or (), body.get("seed")
    stop = (stop,) if isinstance(stop, str) else stop
    checks = [("max_tokens", max_tokens, isinstance(max_tokens, int) and max_tokens > 0),
              ("temperature", temperature, isinstance(temperature, (int, float)) and 0 <= temperature <= 2),
              ("top_p", top_p, isinstance(top_p, (int, float)) and 0 < top_p <= 1),
              ("stop", stop, isinstance(stop, (list, tuple)) and all(isinstance(s, str) for s in stop)),
              ("seed", seed, seed is None or (isinstance(seed, int) and not isinstance(seed, bool)))]
    for name, value, ok in checks:
        if not ok:
            raise BadRequest(f"invalid {name!r}: {value!r}")
    text = tokenizer.apply_chat_template([{"role": m["role"], "content": m["content"]} for m in messages],
                                         tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(prompt_ids) >= max_len:
        raise BadRequest(f"the prompt has {len(prompt_ids)} tokens; this model's context is {max_len}")
    return prompt_ids, Sampling(temperature=float(temperature), top_p=float(top_p), max_new_tokens=max_tokens,
                                stop=tuple(stop), seed=seed)


class ChatServer:
    """The aiohttp application around one backend; `run()` serves until interrupted."""

    def __init__(self, backend, served_name: str, *, api_key: Optional[str] = None, max_batch_size: int = 16):
        self.backend, self.served_name = backend, served_name
        self.api_key, self.max_batch_size = api_key, max_batch_size
        self.created = int(time.time())
        self._queue: Optional[asyncio.Queue] = None

    def app(self):
        from aiohttp import web

        @web.middleware
        async def auth(request, handler):
            return await self._auth(request, handler)

        app = web.Application(middlewares=[auth])
        app.router.add_get("/health", lambda request: web.json_response({"status": "ok"}))
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.on_startup.append(self._start_batcher)
        return app

    # --- handlers -----------------------------------------------------------------------------
    async def _auth(self, request, handler):
        from aiohttp import web

        if self.api_key and request.path != "/health":
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
                return _error(web, "invalid or missing API key", 401)
        return await handler(request)

    async def _models(self, request):
        from aiohttp import web

        return web.json_response({"object": "list", "data": [
            {"id": self.served_name, "object": "model", "created": self.created, "owned_by": "selfsteer"}]})

    async def _chat(self, request):
        from aiohttp import web

        try:
            body = await request.json()
        except ValueError:
            return _error(web, "the request body is not valid JSON", 400)
        try:
            prompt_ids, sampling = parse_request(body, self.backend.tokenizer, self.served_name, self.backend.max_len)
        except BadRequest as exc:
            return _error(web, str(exc), exc.status)
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(prompt_ids, sampling, future))
        try:
            generation = await future
        except Exception as exc:  # a failed generate() fails every request of its batch
            logger.exception("generation failed")
            return _error(web, f"generation failed: {type(exc).__name__}: {exc}", 500)
        completion_tokens = len(generation.token_ids)
        return web.json_response({
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": self.served_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": generation.text},
                         "finish_reason": generation.finish_reason}],
            "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": completion_tokens,
                      "total_tokens": len(prompt_ids) + completion_tokens}})

    # --- batching -----------------------------------------------------------------------------
    async def _start_batcher(self, app) -> None:
        self._queue = asyncio.Queue()
        app["batcher"] = asyncio.get_running_loop().create_task(self._batcher())

    async def _batcher(self) -> None:
        """Take every request waiting (up to max_batch_size) and generate them in one call, off the loop."""
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            while len(jobs) < self.max_batch_size and not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            try:
                generations = await loop.run_in_executor(None, self.backend.generate, [j.prompt_ids for j in jobs],
                                                         [j.sampling for j in jobs])
            except Exception as exc:
                for job in jobs:
                    job.future.set_exception(exc)
                continue
            for job, generation in zip(jobs, generations):
                job.future.set_result(generation)

    async def run(self, host: str, port: int, on_ready=None) -> None:
        from aiohttp import web

        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]  # the real port when port=0
        if on_ready is not None:
            on_ready(f"http://{host}:{bound}/v1")
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()


def _error(web, message: str, status: int):
    kind = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError"}.get(status, "InternalServerError")
    return web.json_response({"error": {"message": message, "type": kind, "code": status}}, status=status)


def serve(model_path: str, *, host: str = "127.0.0.1", port: int = 8000, served_name: Optional[str] = None,
          api_key: Optional[str] = None, device: str = "auto", dtype: str = "float32", max_batch_size: int = 16,
          trust_remote_code: bool = False, torch_threads: int = 0, on_ready=None) -> None:
    """Load `model_path` with the HF backend and serve it until interrupted (Ctrl-C / SIGTERM)."""
    from pathlib import Path

    from selfsteer.engines.hf_engine import HFBackend
    from selfsteer.utils.runtime import limit_threads, resolve_device, resolve_dtype

    from selfsteer.utils.paths import require_hf_model

    require_hf_model(model_path, "--model")
    limit_threads(torch_threads)
    backend = HFBackend(model_path, device=resolve_device(device), dtype=resolve_dtype(dtype),
                        trust_remote_code=trust_remote_code, max_batch_size=max_batch_size)
    server = ChatServer(backend, served_name or Path(model_path).name, api_key=api_key, max_batch_size=max_batch_size)
    try:
        asyncio.run(server.run(host, port, on_ready))
    except KeyboardInterrupt:
        pass
