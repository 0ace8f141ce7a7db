"""Value objects: the request, the API's answers, images and batch results."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

import attrs

from ._constants import MAX_PROMPT_LENGTH, MAX_SEED, MAX_TRACK_ID_LENGTH
from ._errors import JobId, ModelsLabError, RequestValidationError

SafetyCheckerType = Literal["blur", "sensitive_content_text", "pixelate", "black"]
SAFETY_CHECKER_TYPES: tuple[str, ...] = get_args(SafetyCheckerType)

#: The value of ``RequestField.default`` for a field without a default (the prompt).
REQUIRED: Any = attrs.NOTHING


# --- the request's fields: one table ----------------------------------------------------


@attrs.frozen
class RequestField:
    """One documented body field of a text2img request, and its rules.

    ``type`` is the Python type of the attribute; ``low``/``high`` bound numbers (inclusive),
    ``max_length`` strings, ``choices`` enums; ``url`` marks an http(s) URL. The request's
    validators, the command line's options and the README's field list are made from it.
    """

    name: str
    type: Any
    default: Any
    help: str
    low: int | float | None = None
    high: int | float | None = None
    max_length: int | None = None
    choices: tuple[str, ...] = ()
    url: bool = False
    #: Extra spellings of the command-line option (besides ``--field-name``).
    cli_aliases: tuple[str, ...] = ()
    #: True when None is a valid value (the type includes None).
    optional: bool = attrs.field(init=False, repr=False)
    #: ``bool``, ``int``, ``float``, ``choice``, ``url``, ``id`` (int or text) or ``text``.
    kind: str = attrs.field(init=False, repr=False)

    @optional.default
    def _optional(self) -> bool:
        return type(None) in get_args(self.type)

    @kind.default
    def _kind(self) -> str:
        if self.choices:
            return "choice"
        if self.url:
            return "url"
        types = set(get_args(self.type) or (self.type,)) - {type(None)}
        if types == {str, int}:
            return "id"
        (single,) = types
        kinds: dict[Any, str] = {bool: "bool", int: "int", float: "float", str: "text"}
        return kinds[single]

    @property
    def bounds(self) -> str:
        """The allowed values in a few words: ``1..1024``, ``>= 1``, ``<= 200 chars``..."""
        if self.choices:
            return ", ".join(self.choices)
        if self.url:
            return "http(s) URL"
        if self.low is not None and self.high is not None:
            return f"{_number(self.low)}..{_number(self.high)}"
        if self.low is not None:
            return f">= {_number(self.low)}"
        if self.max_length is not None:
            text = f"up to {self.max_length:,} characters"
            return text if self.optional or self.kind == "id" else f"non-empty, {text}"
        return ""

    @property
    def allowed(self) -> str:
        """What an error message says is allowed."""
        kind = self.kind
        if kind == "bool":
            return "True or False (sent as 'yes'/'no')"
        if kind in ("int", "float"):
            noun = "an integer" if kind == "int" else "a number"
            text = f"{noun} in {self.bounds}" if self.high is not None else f"{noun} {self.bounds}"
        elif kind == "choice":
            text = "one of " + ", ".join(self.choices)
        elif kind == "url":
            text = "an absolute http(s) URL"
        elif kind == "id":
            text = f"an integer, or a non-empty string of at most {self.max_length} characters"
        elif self.optional:
            text = f"a string of at most {self.max_length} characters"
        else:
            text = f"a non-empty string of at most {self.max_length} characters without NUL"
        return f"None or {text}" if self.optional else text

    def validate(self, _instance: Any, _attribute: Any, value: Any) -> None:
        """The attrs validator: raise RequestValidationError unless *value* is allowed."""
        if value is None and self.optional:
            return
        if not _VALID[self.kind](self, value):
            too_long = isinstance(value, str) and len(value) > (self.max_length or len(value))
            shown = f"<{len(value)} characters>" if too_long else value
            raise RequestValidationError(self.name, shown, self.allowed)


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _in_range(field: RequestField, value: int | float) -> bool:
    low, high = field.low, field.high
    return (low is None or value >= low) and (high is None or value <= high)


def _valid_int(field: RequestField, value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and _in_range(field, value)


def _valid_float(field: RequestField, value: Any) -> bool:
    # The range test first: an int too large for a float overflows in isfinite().
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and _in_range(field, value)
        and math.isfinite(value)
    )


def _valid_text(field: RequestField, value: Any) -> bool:
    if not isinstance(value, str) or len(value) > (field.max_length or len(value)):
        return False
    return field.optional or (bool(value.strip()) and "\x00" not in value)


def _valid_id(field: RequestField, value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (
        isinstance(value, str) and 0 < len(value) <= (field.max_length or len(value))
    )


def _valid_url(field: RequestField, value: Any) -> bool:
    if not isinstance(value, str) or len(value) > (field.max_length or len(value)):
        return False
    if any(c.isspace() for c in value):
        return False
    try:
        parts = urlsplit(value)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        return False


_VALID: dict[str, Callable[[RequestField, Any], bool]] = {
    "bool": lambda _, value: isinstance(value, bool),
    "int": _valid_int,
    "float": _valid_float,
    "text": _valid_text,
    "id": _valid_id,
    "url": _valid_url,
    "choice": lambda field, value: isinstance(value, str) and value in field.choices,
}

F = RequestField
#: Every documented body field, in the API document's order: the one place their types,
#: defaults, bounds and help text are written.
REQUEST_FIELDS: tuple[RequestField, ...] = (
    F("prompt", str, REQUIRED, "What the image shows.", max_length=MAX_PROMPT_LENGTH),
    F("negative_prompt", str | None, None, "What to keep out of the image.",
      max_length=MAX_PROMPT_LENGTH),
    F("model_id", str, "flux", "The model to run.", max_length=200),
    F("width", int, 512, "Image width in pixels (multiples of 8 recommended).", low=1, high=1024),
    F("height", int, 512, "Image height in pixels (multiples of 8 recommended).",
      low=1, high=1024),
    F("samples", int, 1, "Images per prompt.", low=1, high=4),
    F("num_inference_steps", int, 20, "Denoising steps (the server caps values above 20 at 20).",
      low=1, cli_aliases=("--steps",)),
    F("safety_checker", bool, True, "Run the NSFW safety checker."),
    F("safety_checker_type", SafetyCheckerType, "sensitive_content_text",
      "What the safety checker does to a flagged image.", choices=SAFETY_CHECKER_TYPES),
    F("seed", int | None, None, "Seed of the generator; random when not given.",
      low=0, high=MAX_SEED),
    F("guidance_scale", float, 7.5, "How closely the image follows the prompt.", low=1, high=20),
    F("injected_noise_alpha", float, 0.75, "Flux: injected noise alpha.", low=0, high=1),
    F("sigma_threshold", float, 0.45, "Flux: sigma threshold.", low=0, high=1),
    F("true_cfg_scale", float, 1.0, "Flux: true CFG scale.", low=0, high=10),
    F("use_cfg_zero_star", bool, True, "Flux: CFG-Zero*."),
    F("use_zero_init", bool, False, "Flux: zero init."),
    F("zero_steps", int, 0, "Flux: zero steps (at most num_inference_steps).", low=0),
    F("base64", bool, False, "Ask for base64 output (the SDK decodes it into image files)."),
    F("webhook", str | None, None, "URL the API calls when the job is done.",
      max_length=2048, url=True),
    F("track_id", str | int | None, None, "Id echoed back in webhook calls.",
      max_length=MAX_TRACK_ID_LENGTH),
    F("temp", bool, False, "Ask for temporary image links."),
)  # fmt: skip
del F

#: Field name -> its row of :data:`REQUEST_FIELDS`.
REQUEST_FIELD: Mapping[str, RequestField] = MappingProxyType({f.name: f for f in REQUEST_FIELDS})
#: Wire names of the documented body fields (the key is not one of them: it is the client's).
DOCUMENTED_FIELDS: frozenset[str] = frozenset(REQUEST_FIELD)
RESERVED_FIELDS: frozenset[str] = DOCUMENTED_FIELDS | {"key"}


def _int_to_float(value: Any) -> Any:
    """An int given for a float field is stored as a float, so that equal requests have
    equal wire bodies (and fingerprints): ``guidance_scale=7`` and ``7.0`` are one request."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            return value  # the validator reports it
    return value


def _field(name: str) -> Any:
    """The attrs field of a request field: its default, validator and (floats) converter."""
    spec = REQUEST_FIELD[name]
    converter = _int_to_float if spec.type is float else None
    return attrs.field(default=spec.default, validator=spec.validate, converter=converter)


#: How deep an undocumented field's value may nest lists and objects (deeper ones would
#: exhaust the stack of every JSON encoder and ``repr`` on their way).
MAX_EXTRA_DEPTH = 32

#: The ``extra`` of every request without undocumented fields (read-only, so one will do).
_NO_EXTRA: Mapping[str, Any] = MappingProxyType({})


def _freeze_extra(value: Any) -> Mapping[str, Any]:
    if isinstance(value, MappingProxyType):
        return value
    if not isinstance(value, Mapping):
        raise RequestValidationError("extra", value, "a mapping of undocumented field -> value")
    return MappingProxyType(dict(value)) if value else _NO_EXTRA


def _check_extra(inst: Any, attr: attrs.Attribute[Any], value: Mapping[str, Any]) -> None:
    for name in value:
        if not isinstance(name, str) or not name:
            raise RequestValidationError("extra", name, "non-empty string field names")
        if name == "extra":
            # request_from_wire reads a top-level "extra" as this mapping (the JSON form of a
            # request), so an undocumented field of that name would not survive the round trip.
            raise RequestValidationError(
                "extra['extra']", value[name], "any field name but 'extra' (reserved)"
            )
        if name in RESERVED_FIELDS:
            allowed = (
                "no 'key' (the client sends it)"
                if name == "key"
                else f"undocumented fields only; set {name!r} as a field of Text2ImgRequest"
            )
            # Never quote what may be an API key, even before any client registered it.
            shown = "<redacted>" if name == "key" else value[name]
            raise RequestValidationError(f"extra[{name!r}]", shown, allowed)
        if _nests_deeper(value[name], MAX_EXTRA_DEPTH):
            raise RequestValidationError(
                f"extra[{name!r}]",
                f"<nested over {MAX_EXTRA_DEPTH} levels deep>",
                f"JSON values nested at most {MAX_EXTRA_DEPTH} levels deep",
            )
    if value:
        try:
            json.dumps(dict(value), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise RequestValidationError(
                "extra", dict(value), f"JSON-serialisable values ({exc})"
            ) from exc


def _nests_deeper(value: Any, limit: int) -> bool:
    """True when *value* nests lists or mappings more than *limit* levels deep (or forever,
    as a list holding itself does); walked level by level, never by recursion."""
    level = [value]
    for _ in range(limit + 1):
        level = [
            child
            for item in level
            if isinstance(item, Mapping | list | tuple)
            for child in (item.values() if isinstance(item, Mapping) else item)
        ]
        if not level:
            return False
    return True


# --- the request -------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Text2ImgRequest:
    """One text-to-image request; every documented body field, validated at construction.

    Defaults are the API's documented defaults (width/height/samples/steps/guidance follow
    the endpoint document's example); :data:`REQUEST_FIELDS` lists each field's range.
    Raises :class:`RequestValidationError` naming the field, the value and the allowed range.

    Where the SDK is stricter than the server:

    - ``prompt`` must be non-empty, without NUL, and at most 10,000 characters;
    - ``seed`` must fit the server's 32-bit range (0..2**32-1);
    - ``zero_steps`` may not exceed ``num_inference_steps``;
    - ``webhook`` must be an absolute http(s) URL.

    ``num_inference_steps`` accepts any value >= 1 and is sent as given, but the server
    caps values above 20 at 20. ``width`` and ``height`` should be multiples of 8.
    Undocumented fields the API accepts (``enhance_prompt``, ``scheduler``, ``lora_model``,
    ``vae``, ``clip_skip``, ``tomesd``, ``upscale``, ``self_attention``...) go in ``extra``,
    sent as given; an ``extra`` key naming a documented field (or ``key``) is an error.
    The API key is never part of a request.
    """

    # The annotations repeat REQUEST_FIELDS' types for type checkers (a test holds them equal).
    prompt: str = attrs.field(validator=REQUEST_FIELD["prompt"].validate)
    negative_prompt: str | None = _field("negative_prompt")
    model_id: str = _field("model_id")
    width: int = _field("width")
    height: int = _field("height")
    samples: int = _field("samples")
    num_inference_steps: int = _field("num_inference_steps")
    safety_checker: bool = _field("safety_checker")
    safety_checker_type: SafetyCheckerType = _field("safety_checker_type")  # noqa: RUF009
    seed: int | None = _field("seed")
    guidance_scale: float = _field("guidance_scale")
    injected_noise_alpha: float = _field("injected_noise_alpha")
    sigma_threshold: float = _field("sigma_threshold")
    true_cfg_scale: float = _field("true_cfg_scale")
    use_cfg_zero_star: bool = _field("use_cfg_zero_star")
    use_zero_init: bool = _field("use_zero_init")
    zero_steps: int = _field("zero_steps")
    base64: bool = _field("base64")
    webhook: str | None = _field("webhook")
    track_id: str | int | None = _field("track_id")
    temp: bool = _field("temp")
    extra: Mapping[str, Any] = attrs.field(
        default=_NO_EXTRA, converter=_freeze_extra, validator=_check_extra, hash=False
    )

    def __attrs_post_init__(self) -> None:
        if self.zero_steps > self.num_inference_steps:
            raise RequestValidationError(
                "zero_steps",
                self.zero_steps,
                f"an integer in 0..num_inference_steps ({self.num_inference_steps})",
            )

    def replace(self, **changes: Any) -> Text2ImgRequest:
        """A copy with *changes* applied (validated again)."""
        return attrs.evolve(self, **changes)


def request_fields_markdown() -> str:
    """The README's table of request fields, made from :data:`REQUEST_FIELDS`."""
    lines = ["| field | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for f in REQUEST_FIELDS:
        types = (
            ("str",)
            if f.choices
            else tuple(
                "None" if t is type(None) else t.__name__ for t in get_args(f.type) or (f.type,)
            )
        )
        type_name = " or ".join(f"`{t}`" for t in types)
        default = "required" if f.default is REQUIRED else f"`{f.default!r}`"
        allowed = f.bounds or "`True`/`False`"
        lines.append(f"| `{f.name}` | {type_name} | {default} | {allowed} | {f.help} |")
    return "\n".join(lines) + "\n"


# --- answers -----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Meta:
    """The ``meta`` object of an answer: the request as the server saw it.

    Known fields are typed (``W``/``H`` and ``steps`` from older answers are read into
    ``width``/``height``/``num_inference_steps``); every other field is kept in ``extra``.
    """

    prompt: str | None = None
    negative_prompt: str | None = None
    model_id: str | None = None
    width: int | None = None
    height: int | None = None
    n_samples: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    file_prefix: str | None = None
    base64: bool | None = None
    temp: bool | None = None
    safety_checker: bool | None = None
    safety_checker_type: str | None = None
    track_id: str | int | None = None
    webhook: str | None = None
    extra: Mapping[str, Any] = attrs.field(factory=dict, hash=False)


def _images(value: Iterable[GeneratedImage]) -> tuple[GeneratedImage, ...]:
    return tuple(value)


def _paths(value: Iterable[str | os.PathLike[str]]) -> tuple[Path, ...]:
    return tuple(v if isinstance(v, Path) else Path(v) for v in value)


def _tuple_of_str(value: Any) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class Job:
    """A submitted job the API answered ``processing`` for.

    ``eta`` is the API's estimate in seconds; ``submitted_at`` is ``time.time()`` when the
    answer arrived. ``request`` is None for a job known only by id (``client.fetch``).
    """

    id: JobId
    eta: float = 0.0
    fetch_url: str | None = None
    future_links: tuple[str, ...] = attrs.field(default=(), converter=_tuple_of_str)
    proxy_links: tuple[str, ...] = attrs.field(default=(), converter=_tuple_of_str)
    request: Text2ImgRequest | None = attrs.field(default=None, eq=False)
    submitted_at: float = attrs.field(factory=time.time, eq=False)
    message: str | None = None
    meta: Meta | None = attrs.field(default=None, eq=False)
    track_id: str | int | None = None

    @property
    def is_base64(self) -> bool:
        """True when the links point at base64 text rather than image bytes."""
        if self.meta is not None and self.meta.base64 is not None:
            return self.meta.base64
        return any(_is_base64_url(u) for u in self.future_links)


@attrs.frozen(kw_only=True)
class Generation:
    """A finished job: the ``success`` answer of a submit or a fetch.

    ``output`` holds the image URLs (``.base64`` URLs in base64 mode); ``proxy_links`` are
    mirror URLs used as a download fallback. ``images`` is filled by ``client.text2img``.
    """

    id: JobId | None
    status: str = "success"
    output: tuple[str, ...] = attrs.field(default=(), converter=_tuple_of_str)
    proxy_links: tuple[str, ...] = attrs.field(default=(), converter=_tuple_of_str)
    generation_time: float | None = None
    meta: Meta | None = attrs.field(default=None, eq=False)
    nsfw_content_detected: bool | None = None
    request: Text2ImgRequest | None = attrs.field(default=None, eq=False)
    track_id: str | int | None = None
    images: tuple[GeneratedImage, ...] = attrs.field(default=(), eq=False, converter=_images)

    @property
    def seed(self) -> int | None:
        """The seed the server used (from ``meta``), or the request's."""
        if self.meta is not None and self.meta.seed is not None:
            return self.meta.seed
        return self.request.seed if self.request is not None else None

    @property
    def is_base64(self) -> bool:
        """True when ``output`` holds base64 text links rather than image URLs."""
        if any(_is_base64_url(u) for u in self.output):
            return True
        return bool(self.meta is not None and self.meta.base64 and not self.output)


def _is_base64_url(url: str) -> bool:
    return urlsplit(url).path.endswith(".base64")


@attrs.frozen(kw_only=True)
class GeneratedImage:
    """One image of a generation: written to ``path``, or held in ``data`` when no dest."""

    url: str
    index: int
    job_id: JobId | None = None
    path: Path | None = None
    data: bytes | None = attrs.field(default=None, repr=False)
    content_type: str | None = None

    @property
    def size(self) -> int | None:
        """Bytes of the image, when known."""
        if self.data is not None:
            return len(self.data)
        if self.path is not None and self.path.exists():
            return self.path.stat().st_size
        return None


@attrs.frozen(kw_only=True)
class BatchResult:
    """The outcome of one item of ``generate_many``; ``index`` is its input position.

    Exactly one of ``generation`` and ``error`` is set. ``files`` lists written images.
    ``from_manifest`` is true when the item was already done in a previous run.
    """

    index: int
    request: Text2ImgRequest | None
    generation: Generation | None = None
    error: ModelsLabError | None = None
    files: tuple[Path, ...] = attrs.field(default=(), converter=_paths)
    job_id: JobId | None = None
    from_manifest: bool = False

    @property
    def ok(self) -> bool:
        """True when the item is done (its images are on disk or in memory)."""
        return self.error is None
