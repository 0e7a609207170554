"""An OpenAI-compatible chat-completions server as the principle writer (`principles.llm.source=http`).

For a principle model too large to load beside the policy, as the recipe's Qwen2.5-72B-Instruct,
served by vLLM's OpenAI server (`vllm serve`), `selfsteer serve`, or any compatible service. Each
principle-prompt turn is one POST to `<base_url>/chat/completions`; requests run concurrently, each
with a timeout, and connection errors, timeouts and HTTP 429/5xx are retried a bounded number of
times with exponential backoff (urllib3's `Retry`, which ships with `requests`). The API key is read
from the environment variable that `principles.llm.api_key_env` names, and is never logged.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from selfsteer.engines.base import Sampling

logger = logging.getLogger(__name__)

RETRY_STATUS = (429, 500, 502, 503, 504)


class EndpointError(RuntimeError):
    """The endpoint is unreachable, refused the request, or answered something that is not a completion."""


class RequestRejected(EndpointError):
    """The server refused one request as invalid (HTTP 400/413/422: e.g. longer than its context).
    The request is at fault, not the server: its prompt is skipped, the others go on."""


REJECT_STATUS = (400, 413, 422)


class ChatEndpoint:
    """A client for one OpenAI-compatible server.

    Args:
        base_url: the API root, e.g. "http://127.0.0.1:8000/v1".
        model: the served model's name; None asks the server (`GET /models`) and takes the first.
        api_key_env: name of the environment variable holding the key (sent as a Bearer token).
        timeout_s: per-request limit in seconds (connecting and reading).
        retries: extra attempts per request after a connection error, timeout or HTTP 429/5xx.
        max_concurrency: requests in flight at once.
        backoff_s: first backoff; doubles each retry.
    """

    def __init__(self, base_url: str, *, model: Optional[str] = None, api_key_env: Optional[str] = None,
                 timeout_s: float = 120.0, retries: int = 3, max_concurrency: int = 8, backoff_s: float = 0.5):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url={base_url!r} must start with http:// or https://")
        self.base_url = base_url.rstrip("/")
        self.model, self.api_key_env = model, api_key_env
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.max_concurrency = max(1, max_concurrency)
        self._local = threading.local()

    @classmethod
    def from_config(cls, llm_cfg) -> ChatEndpoint:
        """From `principles.llm` (source=http)."""
        return cls(llm_cfg.base_url, model=llm_cfg.model_name, api_key_env=llm_cfg.api_key_env,
                   timeout_s=llm_cfg.timeout_s, retries=llm_cfg.http_retries,
                   max_concurrency=llm_cfg.max_concurrency)

    # --- transport -----------------------------------------------------------------------------
    def _session(self):
        session = getattr(self._local, "session", None)
        if session is None:
            import requests
            from requests.adapters import HTTPAdapter
            from urllib3.util.retry import Retry

            retry = Retry(total=self.retries, connect=self.retries, read=self.retries, status=self.retries,
                          backoff_factor=self.backoff_s, status_forcelist=RETRY_STATUS,
                          allowed_methods=None,  # POSTs too: a completion request has no side effects
                          raise_on_status=False, respect_retry_after_header=True)
            session = requests.Session()
            session.mount("http://", HTTPAdapter(max_retries=retry))
            session.mount("https://", HTTPAdapter(max_retries=retry))
            session.headers.update(self._auth())
            self._local.session = session
        return session

    def _auth(self) -> dict[str, str]:
        if not self.api_key_env:
            return {}
        key = os.environ.get(self.api_key_env)
        if not key:
            raise EndpointError(f"principles.llm.api_key_env={self.api_key_env!r}: that environment variable is "
                                "not set (or empty) in the principle actor's process; export it before starting")
        return {"Authorization": f"Bearer {key}"}

    def _request(self, method: str, path: str, payload: Optional[dict] = None) -> dict:
        import requests

        url = f"{self.base_url}{path}"
        try:
            response = self._session().request(method, url, json=payload,
                                               timeout=(min(10.0, self.timeout_s), self.timeout_s))
        except requests.RequestException as exc:
            raise EndpointError(
                f"principle endpoint {url} is unreachable after {self.retries + 1} attempt(s) "
                f"(timeout {self.timeout_s:g} s each): {type(exc).__name__}: {_reason(exc)}. Start the server "
                "(e.g. `selfsteer serve --model DIR` or `vllm serve MODEL`) or fix principles.llm.base_url") from None
        if response.status_code in (401, 403):
            raise EndpointError(f"principle endpoint {url} refused the request (HTTP {response.status_code}); check "
                                f"the key in the environment variable principles.llm.api_key_env names "
                                f"({self.api_key_env!r})")
        if response.status_code in REJECT_STATUS:
            raise RequestRejected(f"principle endpoint {url} rejected the request (HTTP {response.status_code}): "
                                  f"{_server_message(response)}")
        if response.status_code != 200:
            raise EndpointError(f"principle endpoint {url} answered HTTP {response.status_code}"
                                f"{' after retries' if response.status_code in RETRY_STATUS else ''}: "
                                f"{response.text[:300]!r}")
        try:
            return response.json()
        except ValueError:
            raise EndpointError(f"principle endpoint {url} answered non-JSON: {response.text[:300]!r}") from None

    # --- API -----------------------------------------------------------------------------------
    def model_name(self) -> str:
        """The configured model, or the server's first one; also proves the server answers."""
        if self.model is None:
            body = self._request("GET", "/models")
            try:
                self.model = body["data"][0]["id"]
            except (KeyError, IndexError, TypeError):
                raise EndpointError(f"principle endpoint {self.base_url}/models lists no model: {str(body)[:300]!r}; "
                                    "set principles.llm.model_name") from None
            logger.info("principle endpoint %s serves %r", self.base_url, self.model)
        return self.model

    def chat(self, text: str, sampling: Sampling) -> str:
        """One user turn -> the assistant's reply (stop strings are the server's to apply)."""
        payload = {"model": self.model_name(), "messages": [{"role": "user", "content": text}],
                   "temperature": sampling.temperature, "top_p": sampling.top_p,
                   "max_tokens": sampling.max_new_tokens, "n": 1}
        if sampling.stop:
            payload["stop"] = list(sampling.stop)
        if sampling.seed is not None:
            payload["seed"] = sampling.seed
        body = self._request("POST", "/chat/completions", payload)
        try:
            content = body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise EndpointError(f"principle endpoint {self.base_url}/chat/completions answered without "
                                f"choices[0].message.content: {str(body)[:300]!r}") from None
        return content or ""

    def complete(self, texts: list[str], sampling: Sampling, rejected: Optional[dict[str, str]] = None) -> list[str]:
        """Replies to `texts`, in order, with up to `max_concurrency` requests in flight.

        With a `rejected` dict, a request the server refuses as invalid (`RequestRejected`) gets the
        reply "" and its text -> the server's reason is added there; a text already in it is not sent
        again. Without one, the refusal is raised.
        """
        if not texts:
            return []
        self.model_name()  # resolve once, before the threads start

        def one(text: str) -> str:
            if rejected is None:
                return self.chat(text, sampling)
            if text in rejected:
                return ""
            try:
                return self.chat(text, sampling)
            except RequestRejected as exc:
                rejected[text] = str(exc)
                return ""

        workers = min(self.max_concurrency, len(texts))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="principle-http") as pool:
            return list(pool.map(one, texts))


def _server_message(response) -> str:
    """The error message of an OpenAI-format error body, else the start of the body."""
    try:
        return str(response.json()["error"]["message"])[:300]
    except (ValueError, KeyError, TypeError):
        return repr(response.text[:300])


def _reason(exc: Exception) -> str:
    """The innermost cause of a requests/urllib3 error, which names what actually failed."""
    inner = exc.args[0] if exc.args else exc
    inner = getattr(inner, "reason", inner)
    return str(inner)[:300]
