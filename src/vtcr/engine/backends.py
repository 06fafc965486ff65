"""Opening the backend a user names: a local checkpoint (transformers, in-process) or an
OpenAI-compatible server. One function, shared by `vtcr reason`, `vtcr eval` and the library."""

from __future__ import annotations

from typing import Any

from .backend import Backend


def open_backend(
    model: str | None = None,
    *,
    server: str | None = None,
    served_model: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    concurrency: int = 8,
    timeout_s: float | None = None,
    api_key: str | None = None,
) -> Backend:
    """The backend a user names: a checkpoint folder or hub id run in-process (`TransformersBackend`),
    or an OpenAI-compatible server (`OpenAIBackend`: vllm serve, SGLang, vtcr serve) with the name it
    serves the model under. concurrency: requests in flight -- HTTP requests to a server, or rows
    the transformers backend decodes together (its `batch_size`). Raises ValueError naming what is
    missing."""
    if server is not None:
        if model is not None:
            raise ValueError("give either a model (in-process) or a server, not both")
        if not served_model:
            raise ValueError("a server needs the served model name (--served-model NAME, see GET /v1/models)")
        from .openai_backend import OpenAIBackend

        kwargs: dict[str, Any] = {"concurrency": concurrency, "api_key": api_key}
        if timeout_s is not None:
            kwargs["timeout_s"] = timeout_s
        return OpenAIBackend(server, served_model, **kwargs)
    if model is None:
        raise ValueError("no model: give --model PATH, or --server URL with --served-model NAME")
    from .transformers_backend import TransformersBackend

    return TransformersBackend.from_pretrained(model, device=device, dtype=dtype, batch_size=concurrency)
