"""The bad-input table: every invalid request is refused before any network call.

Each row goes through ``client.submit(**fields)``, ``client.text2img(**fields)``,
``client.submit(mapping)`` and ``client.generate_many([mapping])`` against a running
emulator. Each must raise (or, in a batch, yield) a :class:`RequestValidationError` whose
``field`` and message name the field, and the emulator must see no request at all.

Every row is invalid in both forms of a request: as typed keyword fields and as a JSON-like
mapping (where ``"512"`` or ``2.0`` are accepted for an integer, as the API accepts them).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from modelslab_async import BatchResult, Client, RequestValidationError, Text2ImgRequest
from modelslab_async.emulator import Emulator

pytestmark = pytest.mark.anyio

NAN, INF = math.nan, math.inf
FOX = {"prompt": "a red fox"}
DEEP: Any = 1
for _ in range(33):
    DEEP = [DEEP]


def row(name: str, field: str, **fields: Any) -> Any:
    given = fields if "prompt" in fields or field == "prompt" else {**FOX, **fields}
    return pytest.param(given, field, id=name)


BAD = [
    # prompt
    row("empty prompt", "prompt", prompt=""),
    row("whitespace prompt", "prompt", prompt=" \t\n "),
    row("no prompt", "prompt", width=512),
    row("prompt None", "prompt", prompt=None),
    row("prompt not text", "prompt", prompt=42),
    row("prompt bytes", "prompt", prompt=b"a red fox"),
    row("huge prompt", "prompt", prompt="x" * 10_001),
    row("NUL in prompt", "prompt", prompt="a red\x00fox"),
    row("huge negative prompt", "negative_prompt", negative_prompt="y" * 10_001),
    row("negative prompt not text", "negative_prompt", negative_prompt=["ugly"]),
    row("blank model_id", "model_id", model_id="  "),
    row("model_id None", "model_id", model_id=None),
    row("NUL in model_id", "model_id", model_id="flux\x00"),
    # sizes and counts
    row("width 0", "width", width=0),
    row("width 1025", "width", width=1025),
    row("width negative", "width", width=-512),
    row("width not a number", "width", width="wide"),
    row("width bool", "width", width=True),
    row("width fraction", "width", width=512.5),
    row("width NaN", "width", width=NAN),
    row("height 2048", "height", height=2048),
    row("height None", "height", height=None),
    row("samples 0", "samples", samples=0),
    row("samples 5", "samples", samples=5),
    row("samples bool", "samples", samples=False),
    row("steps 0", "num_inference_steps", num_inference_steps=0),
    row("steps negative", "num_inference_steps", num_inference_steps=-20),
    row("steps inf", "num_inference_steps", num_inference_steps=INF),
    row("zero_steps negative", "zero_steps", zero_steps=-1),
    row("zero_steps above steps", "zero_steps", zero_steps=30, num_inference_steps=20),
    row("zero_steps bool", "zero_steps", zero_steps=True),
    # seed
    row("seed negative", "seed", seed=-1),
    row("seed above 2**32-1", "seed", seed=2**32),
    row("seed text", "seed", seed="abc"),
    row("seed bool", "seed", seed=True),
    row("seed fraction", "seed", seed=1.5),
    # floats
    row("guidance below 1", "guidance_scale", guidance_scale=0.5),
    row("guidance above 20", "guidance_scale", guidance_scale=21),
    row("guidance NaN", "guidance_scale", guidance_scale=NAN),
    row("guidance inf", "guidance_scale", guidance_scale=INF),
    row("guidance -inf", "guidance_scale", guidance_scale=-INF),
    row("guidance text", "guidance_scale", guidance_scale="high"),
    row("guidance bool", "guidance_scale", guidance_scale=True),
    row("guidance huge int", "guidance_scale", guidance_scale=10**400),
    row("noise alpha above 1", "injected_noise_alpha", injected_noise_alpha=1.5),
    row("noise alpha -inf", "injected_noise_alpha", injected_noise_alpha=-INF),
    row("sigma threshold negative", "sigma_threshold", sigma_threshold=-0.1),
    row("sigma threshold NaN", "sigma_threshold", sigma_threshold=NAN),
    row("true cfg above 10", "true_cfg_scale", true_cfg_scale=10.5),
    row("true cfg inf", "true_cfg_scale", true_cfg_scale=INF),
    # yes/no fields and the enum
    row("safety_checker maybe", "safety_checker", safety_checker="maybe"),
    row("use_cfg_zero_star sometimes", "use_cfg_zero_star", use_cfg_zero_star="sometimes"),
    row("use_zero_init 2", "use_zero_init", use_zero_init=2),
    row("base64 perhaps", "base64", base64="perhaps"),
    row("temp None", "temp", temp=None),
    row("unknown safety_checker_type", "safety_checker_type", safety_checker_type="gaussian"),
    row("empty safety_checker_type", "safety_checker_type", safety_checker_type=""),
    row("safety_checker_type bool", "safety_checker_type", safety_checker_type=True),
    # webhook and track id
    row("ftp webhook", "webhook", webhook="ftp://hooks.example/h"),
    row("webhook without scheme", "webhook", webhook="hooks.example/h"),
    row("webhook without host", "webhook", webhook="http://"),
    row("javascript webhook", "webhook", webhook="javascript:alert(1)"),
    row("webhook with a space", "webhook", webhook="http://hooks example/h"),
    row("webhook not text", "webhook", webhook=42),
    row("empty track_id", "track_id", track_id=""),
    row("track_id too long", "track_id", track_id="t" * 256),
    row("track_id bool", "track_id", track_id=True),
    row("track_id fraction", "track_id", track_id=1.5),
    # the key, and extra fields that collide or do not serialise
    row("key as a field", "key", key="sk-live-0000"),
    row("extra key", "extra['key']", extra={"key": "sk-live-0000"}),
    row("extra prompt", "extra['prompt']", extra={"prompt": "another"}),
    row("extra width", "extra['width']", extra={"width": 768}),
    row("extra track_id", "extra['track_id']", extra={"track_id": "t1"}),
    row("extra named extra", "extra['extra']", extra={"extra": {}}),
    row("extra NaN", "extra", extra={"cfg_rescale": NAN}),
    row("extra nested inf", "extra", extra={"lora_strength": [1.0, INF]}),
    row("extra nested 33 deep", "extra['lora']", extra={"lora": DEEP}),
    row("extra not JSON", "extra", extra={"callback": object()}),
    row("extra empty name", "extra", extra={"": 1}),
    row("extra not a mapping", "extra", extra=["enhance_prompt"]),
    row("extra text", "extra", extra="enhance_prompt=yes"),
]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(workers=2, duration=(0.01, 0.02)) as emulator:
        yield emulator


@pytest.fixture
async def client(emu: Emulator) -> AsyncIterator[Client]:
    emu.reset()
    async with Client("bad-input-key", base_url=emu.base_url) as c:
        yield c
    # Nothing reached the server, and the client made no call either.
    assert sum(emu.stats.requests_by_endpoint.values()) == 0
    assert c.statistics().calls == {"submit": 0, "fetch": 0, "download": 0, "retries": 0}


def test_the_table_has_at_least_30_rows_and_covers_every_field() -> None:
    assert len(BAD) >= 30
    fields = {p.values[1].split("[")[0] for p in BAD}  # type: ignore[union-attr]
    assert {f.name for f in Text2ImgRequest.__attrs_attrs__} <= fields  # type: ignore[attr-defined]


def check(error: BaseException, field: str) -> None:
    assert isinstance(error, RequestValidationError), repr(error)
    assert error.field == field
    assert str(error).startswith(f"{field}: got ")


@pytest.mark.parametrize(("fields", "field"), BAD)
async def test_submit_with_keyword_fields(
    client: Client, fields: Mapping[str, Any], field: str
) -> None:
    with pytest.raises(RequestValidationError) as info:
        await client.submit(**fields)
    check(info.value, field)


@pytest.mark.parametrize(("fields", "field"), BAD)
async def test_text2img_with_keyword_fields(
    client: Client, fields: Mapping[str, Any], field: str
) -> None:
    with pytest.raises(RequestValidationError) as info:
        await client.text2img(**fields)
    check(info.value, field)


@pytest.mark.parametrize(("fields", "field"), BAD)
async def test_submit_with_a_mapping(client: Client, fields: Mapping[str, Any], field: str) -> None:
    with pytest.raises(RequestValidationError) as info:
        await client.submit(dict(fields))
    check(info.value, field)


@pytest.mark.parametrize(("fields", "field"), BAD)
async def test_generate_many_yields_the_error_as_the_items_result(
    client: Client, fields: Mapping[str, Any], field: str
) -> None:
    results: list[BatchResult] = [r async for r in client.generate_many([dict(fields)])]
    [result] = results
    assert result.index == 0
    assert result.request is None
    assert result.error is not None
    check(result.error, field)


async def test_a_valid_request_does_reach_the_emulator(emu: Emulator) -> None:
    """The zero-requests checks above are not vacuous: the same setup does send."""
    emu.reset()
    async with Client("bad-input-key", base_url=emu.base_url) as c:
        job = await c.submit(**FOX, width=64, height=64)
        await c.wait(job)
    assert emu.stats.requests_by_endpoint["submit"] == 1


@pytest.mark.parametrize("call", ["submit", "text2img"])
async def test_a_misspelt_keyword_field_is_refused_without_quoting_its_value(
    client: Client, call: str
) -> None:
    # (As a mapping, an unknown name is an undocumented API field and is sent in extra.)
    with pytest.raises(RequestValidationError) as info:
        await getattr(client, call)(prompt="a red fox", wdith=512, api_key="sk-live-0000")
    check(info.value, "wdith")
    assert "sk-live-0000" not in str(info.value)
    with pytest.raises(RequestValidationError) as info:
        await getattr(client, call)(prompt="a red fox", api_key="sk-live-0000")
    check(info.value, "api_key")
    assert "sk-live-0000" not in str(info.value)
