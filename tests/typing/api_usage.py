"""Never run: exercises the public API so that ``mypy --strict tests/typing`` checks the
annotations users see (as stamina's ``tests/typing/api.py`` does).

Lines with ``# type: ignore[...]`` are misuses that must stay type errors: with
``warn_unused_ignores`` (part of ``--strict``) an ignore that is no longer needed fails.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping
from pathlib import Path
from typing import Any

import modelslab_async
from modelslab_async import (
    APIError,
    AuthenticationError,
    BatchOptions,
    BatchProgress,
    BatchResult,
    Client,
    ClientStats,
    DownloadError,
    GeneratedImage,
    Generation,
    GenerationFailed,
    GenerationTimeout,
    Job,
    Lease,
    LocalSlots,
    ManifestLockedError,
    Meta,
    ModelsLabError,
    RateLimitError,
    RaySlots,
    RedirectError,
    RedisSlots,
    RequestValidationError,
    ResponseFormatError,
    RetryPolicy,
    SafetyCheckerType,
    Slots,
    SlotStatistics,
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
    if isinstance(exc, RedirectError):
        location: str | None = exc.location
        return f"{exc.status_code} to {location}"
    if isinstance(exc, ManifestLockedError):
        pid: int | None = exc.pid
        return f"{exc.path} held by {pid}"
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
        scratch: list[GeneratedImage] = await client.download(gen, "tmp/", fsync=False)
        done: Generation = await client.text2img(prompt="a red fox", dest=Path("out"))
        results: AsyncIterator[BatchResult] = client.generate_many(
            [request, {"prompt": "a blue fox"}, *prompts], dest="out/", manifest="run.jsonl"
        )
        staged = client.generate_many(prompts, dest="tmp/", fsync=False)
        async for result in results:
            outcome(result)
        describe(done)
        del images, scratch, staged


# --- batches: generate_many's options are one TypedDict --------------------------------------


def show(progress: BatchProgress) -> None:
    print(progress.done, progress.failed, progress.images_per_minute)


async def batch(client: Client, prompts: list[str]) -> None:
    options: BatchOptions = {"dest": "out/", "max_in_flight": 4, "on_progress": show}
    async for result in client.generate_many(prompts, **options):
        outcome(result)
    client.generate_many(prompts, max_resubmits=0, manifest=Path("run.jsonl"), webhook=None)
    client.generate_many(prompts, dset="out/")  # type: ignore[call-arg]
    client.generate_many(prompts, max_in_flight="4")  # type: ignore[arg-type]


# --- slots: in-process by default, or any object with the Slots protocol -------------------


class CountingSlots:
    """A user's own Slots: the protocol is structural."""

    def __init__(self) -> None:
        self.inner = LocalSlots(2)

    @property
    def limit(self) -> int:
        return self.inner.limit

    @property
    def renew_interval(self) -> float | None:
        return None

    async def __aenter__(self) -> CountingSlots:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def acquire(self) -> Lease:
        return await self.inner.acquire()

    async def release(self, lease: Lease) -> None:
        await self.inner.release(lease)

    async def renew(self, leases: Collection[Lease]) -> None:
        return None

    async def set_limit(self, limit: int) -> None:
        await self.inner.set_limit(limit)

    def statistics(self) -> SlotStatistics:
        return self.inner.statistics()


async def slots_usage() -> None:
    local: Slots = LocalSlots(8)
    mine: Slots = CountingSlots()
    async with Client(slots=local) as client, Client(slots=mine, max_in_flight="auto"):
        lease: Lease = await local.acquire()
        await local.release(lease)
        await local.set_limit(4)
        held: int = local.statistics().held_here
        stats: ClientStats = client.statistics()
        shared: Slots = client.slots
        limit: int = client.in_flight_limit
        del held, stats, shared, limit
    Client(max_in_flight="many")  # type: ignore[arg-type]
    Client(slots=object())  # type: ignore[arg-type]


# --- shared slots (docs/scale-out.md) --------------------------------------------------------


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
