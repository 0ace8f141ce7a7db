"""Never run: exercises the public API so that ``mypy --strict tests/typing`` checks the
annotations users see (as stamina's ``tests/typing/api.py`` does).

Lines with ``# type: ignore[...]`` are misuses that must stay type errors: with
``warn_unused_ignores`` (part of ``--strict``) an ignore that is no longer needed fails.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import modelslab_async
from modelslab_async import (
    APIError,
    AuthenticationError,
    BatchResult,
    Client,
    DownloadError,
    GeneratedImage,
    Generation,
    GenerationFailed,
    GenerationTimeout,
    Job,
    Meta,
    ModelsLabError,
    RateLimitError,
    RaySlots,
    RedisSlots,
    RequestValidationError,
    ResponseFormatError,
    RetryPolicy,
    SafetyCheckerType,
    Text2ImgRequest,
    Timeouts,
    TransportError,
    set_testing,
)
from modelslab_async.errors import AmbiguousSubmitError

version: str = modelslab_async.__version__

# --- the request ---------------------------------------------------------------------------

kind: SafetyCheckerType = "blur"
request = Text2ImgRequest(
    prompt="a red fox",
    negative_prompt=None,
    model_id="flux",
    width=512,
    height=512,
    samples=1,
    num_inference_steps=31,
    safety_checker=False,
    safety_checker_type=kind,
    seed=None,
    guidance_scale=7.5,
    injected_noise_alpha=0.75,
    sigma_threshold=0.45,
    true_cfg_scale=1.0,
    use_cfg_zero_star=True,
    use_zero_init=False,
    zero_steps=0,
    base64=False,
    webhook="https://hooks.example/done",
    track_id="run-1",
    temp=False,
    extra={"scheduler": "UniPCMultistepScheduler", "vae": None},
)
seed: int | None = request.seed
extra: Mapping[str, Any] = request.extra
wider: Text2ImgRequest = request.replace(width=1024)
guidance: float = request.guidance_scale
with_int_seed = Text2ImgRequest(prompt="x", seed=42, track_id=7)

Text2ImgRequest()  # type: ignore[call-arg]
Text2ImgRequest(prompt="x", width="512")  # type: ignore[arg-type]
Text2ImgRequest(prompt="x", safety_checker_type="smudge")  # type: ignore[arg-type]
Text2ImgRequest("positional prompt")  # type: ignore[call-arg]

# --- policies ------------------------------------------------------------------------------

timeouts = Timeouts(connect=5.0, read=30.0, total=None)
policy = RetryPolicy(
    max_retries=3, initial=0.25, max_wait=8.0, jitter=True, retry_ambiguous_submits=False
)
wait: float = policy.backoff(2)
set_testing(True)
set_testing(False)

# --- answers ---------------------------------------------------------------------------------


def describe(answer: Job | Generation) -> str:
    if isinstance(answer, Job):
        job_id: int | str = answer.id
        eta: float = answer.eta
        links: tuple[str, ...] = answer.future_links
        return f"{job_id} in {eta}s: {links}"
    gen_id: int | str | None = answer.id
    urls: tuple[str, ...] = answer.output
    took: float | None = answer.generation_time
    meta: Meta | None = answer.meta
    width: int | None = meta.width if meta is not None else None
    unknown: Mapping[str, Any] = meta.extra if meta is not None else {}
    used_seed: int | None = answer.seed
    return f"{gen_id} {urls} {took} {width} {unknown} {used_seed} {answer.is_base64}"


def image_path(image: GeneratedImage) -> Path | None:
    size: int | None = image.size
    data: bytes | None = image.data
    del size, data
    return image.path


def outcome(result: BatchResult) -> str:
    index: int = result.index
    error: ModelsLabError | None = result.error
    files: tuple[Path, ...] = result.files
    if result.ok and result.generation is not None:
        return f"{index}: {describe(result.generation)} -> {files}"
    return f"{index}: {error}"


# --- errors: every class carries its data as typed attributes --------------------------------


def explain(exc: ModelsLabError) -> str:
    if isinstance(exc, RequestValidationError):
        field: str = exc.field
        allowed: str = exc.allowed
        return f"{field}: {allowed}"
    if isinstance(exc, RateLimitError):
        retry_after: float | None = exc.retry_after
        return f"wait {retry_after}"
    if isinstance(exc, AuthenticationError | APIError):
        status: int | None = exc.status_code
        message: str | None = exc.api_message
        return f"{status} {message} {exc.url} {exc.job_id}"
    if isinstance(exc, GenerationFailed):
        transient: bool = exc.transient
        return f"{exc.job_id} {transient}"
    if isinstance(exc, GenerationTimeout):
        waited: float = exc.waited
        return f"{exc.job_id} after {waited}"
    if isinstance(exc, AmbiguousSubmitError | TransportError):
        return f"{exc.kind} {exc.url}"
    if isinstance(exc, ResponseFormatError):
        return f"{exc.status_code} {exc.body} {exc.path}"
    if isinstance(exc, DownloadError):
        url: str = exc.url
        return url
    return exc.message


timeout_is_builtin: TimeoutError = GenerationTimeout(1, 2.0)
validation_is_value_error: ValueError = RequestValidationError("width", 2048, "1..1024")

# --- the client (README.md, "The client") -----------------------------------------------------


async def main(prompts: list[str]) -> None:
    async with Client(api_key=None, base_url=None, max_in_flight=8, timeout=timeouts) as client:
        answer: Job | Generation = await client.submit(request)
        gen: Generation = await client.wait(answer, timeout=600)
        images: list[GeneratedImage] = await client.download(gen, dest="out/")
        done: Generation = await client.text2img(prompt="a red fox", dest=Path("out"))
        results: AsyncIterator[BatchResult] = client.generate_many(
            [request, {"prompt": "a blue fox"}, *prompts], dest="out/", manifest="run.jsonl"
        )
        async for result in results:
            outcome(result)
        describe(done)
        del images


# --- shared slots (DESIGN.md §10) ------------------------------------------------------------


async def share(slots: RedisSlots | RaySlots) -> int:
    async with slots:
        lease = await slots.acquire()
        await slots.renew([lease])
        await slots.release(lease)
        await slots.set_limit(4)
        interval: float = slots.renew_interval
        del interval
        return slots.limit + slots.statistics().held


redis_slots = RedisSlots("rediss://:password@redis.example:6380/0", 5, name="modelslab", lease=30.0)
ray_slots = RaySlots(5, name="modelslab-slots", lease=30.0, namespace="modelslab_async")
round_trips: int = redis_slots.round_trips
