"""Value objects: the request, the API's answers, images and batch results."""

from __future__ import annotations

import functools
import math
import operator
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypeVar, get_args
from urllib.parse import urlsplit

import attrs

from ._constants import MAX_PROMPT_LENGTH, MAX_SEED, MAX_TRACK_ID_LENGTH
from ._errors import JobId, ModelsLabError, RequestValidationError

SafetyCheckerType = Literal["blur", "sensitive_content_text", "pixelate", "black"]
SAFETY_CHECKER_TYPES: tuple[str, ...] = get_args(SafetyCheckerType)

#: Wire names of the documented body fields (the key is not one of them: it is the client's).
DOCUMENTED_FIELDS: frozenset[str] = frozenset(
    {
        "prompt",
        "negative_prompt",
        "model_id",
        "width",
        "height",
        "samples",
        "num_inference_steps",
        "safety_checker",
        "safety_checker_type",
        "seed",
        "guidance_scale",
        "injected_noise_alpha",
        "sigma_threshold",
        "true_cfg_scale",
        "use_cfg_zero_star",
        "use_zero_init",
        "zero_steps",
        "base64",
        "webhook",
        "track_id",
        "temp",
    }
)
RESERVED_FIELDS: frozenset[str] = DOCUMENTED_FIELDS | {"key"}


# --- validators --------------------------------------------------------------------------


def _int_in(lo: int, hi: int | None) -> Any:
    allowed = f"an integer in {lo}..{hi}" if hi is not None else f"an integer >= {lo}"

    def check(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RequestValidationError(attr.name, value, allowed)
        if value < lo or (hi is not None and value > hi):
            raise RequestValidationError(attr.name, value, allowed)

    return check


def _float_in(lo: float, hi: float) -> Any:
    allowed = f"a number in {lo:g}..{hi:g}"

    def check(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RequestValidationError(attr.name, value, allowed)
        # Compare before isfinite(): an int too large for a float overflows in isfinite().
        if not lo <= value <= hi or not math.isfinite(value):
            raise RequestValidationError(attr.name, value, allowed)

    return check


def _int_to_float(value: Any) -> Any:
    """An int given for a float field is stored as a float, so that equal requests have
    equal wire bodies (and fingerprints): ``guidance_scale=7`` and ``7.0`` are one request."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            return value  # the range validator reports it
    return value


def _is_bool(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        raise RequestValidationError(attr.name, value, "True or False (sent as 'yes'/'no')")


def _opt_text(max_len: int) -> Any:
    def check(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        if value is None:
            return
        if not isinstance(value, str):
            raise RequestValidationError(attr.name, value, "a string or None")
        if len(value) > max_len:
            raise RequestValidationError(
                attr.name, f"<{len(value)} characters>", f"at most {max_len} characters"
            )

    return check


def _check_prompt(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    allowed = f"a non-empty string of at most {MAX_PROMPT_LENGTH} characters"
    if not isinstance(value, str) or not value.strip():
        raise RequestValidationError(attr.name, value, allowed)
    if len(value) > MAX_PROMPT_LENGTH:
        raise RequestValidationError(attr.name, f"<{len(value)} characters>", allowed)
    if "\x00" in value:
        raise RequestValidationError(attr.name, value, allowed + " without NUL characters")


def _check_model_id(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise RequestValidationError(attr.name, value, "a non-empty model id string")


def _check_seed(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise RequestValidationError(
            attr.name, value, f"None (random) or an integer in 0..{MAX_SEED}"
        )


def _check_safety_type(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if value not in SAFETY_CHECKER_TYPES:
        raise RequestValidationError(attr.name, value, "one of " + ", ".join(SAFETY_CHECKER_TYPES))


def _check_webhook(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    allowed = "None or an absolute http(s) URL"
    if not isinstance(value, str) or len(value) > 2048 or any(c.isspace() for c in value):
        raise RequestValidationError(attr.name, value, allowed)
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        raise RequestValidationError(attr.name, value, allowed) from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RequestValidationError(attr.name, value, allowed)


def _check_track_id(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    allowed = f"None, an integer, or a non-empty string of at most {MAX_TRACK_ID_LENGTH} chars"
    if isinstance(value, bool):
        raise RequestValidationError(attr.name, value, allowed)
    if isinstance(value, int):
        return
    if not isinstance(value, str) or not value or len(value) > MAX_TRACK_ID_LENGTH:
        raise RequestValidationError(attr.name, value, allowed)


#: The ``extra`` of every request without undocumented fields (read-only, so one will do).
_NO_EXTRA: Mapping[str, Any] = MappingProxyType({})


def _freeze_extra(value: Any) -> Mapping[str, Any]:
    if isinstance(value, MappingProxyType):
        return value
    if not isinstance(value, Mapping):
        raise RequestValidationError("extra", value, "a mapping of undocumented field -> value")
    return MappingProxyType(dict(value)) if value else _NO_EXTRA


def _check_extra(inst: Any, attr: attrs.Attribute[Any], value: Mapping[str, Any]) -> None:
    if not value:
        return
    import json

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
    try:
        json.dumps(dict(value), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise RequestValidationError(
            "extra", dict(value), f"JSON-serialisable values ({exc})"
        ) from exc


# --- the request -------------------------------------------------------------------------


_A = TypeVar("_A")


def trusted_replace(instance: _A, **changes: Any) -> _A:
    """A copy of a frozen attrs *instance* with *changes* set as given: no validators, no
    converters. Only for values the SDK made itself and knows valid (a track id it derived,
    a job id from the answer it parsed); everything from users goes through the class."""
    cls = type(instance)
    copy = _COPIERS.get(cls)
    if copy is None:
        copy = _COPIERS[cls] = _copier(cls)
    new: _A = copy(instance)
    setattr_ = object.__setattr__
    for name, value in changes.items():
        setattr_(new, name, value)
    return new


def _copier(cls: type) -> Callable[[Any], Any]:
    """A function of straight-line code that copies every field of an instance of the attrs
    class *cls* (made once per class: a loop over the fields costs twice as much)."""
    names = [f.name for f in attrs.fields(cls)]
    lines = ["def copy(old):", " new = _new(_cls)"]
    lines += [f" _set(new, {name!r}, old.{name})" for name in names]
    lines.append(" return new")
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls, "_set": object.__setattr__}
    exec(compile("\n".join(lines), f"<copy {cls.__name__}>", "exec"), namespace)
    copy: Callable[[Any], Any] = namespace["copy"]
    return copy


def values_getter(names: Sequence[str]) -> Callable[[Any], tuple[Any, ...]]:
    """A function returning the attributes *names* of an object as a tuple (one C call)."""
    if len(names) == 1:
        name = names[0]
        return lambda obj: (getattr(obj, name),)
    return operator.attrgetter(*names)


#: attrs class -> its field copier, for trusted_replace.
_COPIERS: dict[type, Callable[[Any], Any]] = {}


@attrs.frozen(kw_only=True)
class Text2ImgRequest:
    """One text-to-image request; every documented body field, validated at construction.

    Defaults are the API's documented defaults (width/height/samples/steps/guidance follow
    the endpoint document's example). Raises :class:`RequestValidationError` naming the
    field, the value and the allowed range.

    Where the SDK is stricter than the server:

    - ``prompt`` must be non-empty and at most 10,000 characters;
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

    prompt: str
    negative_prompt: str | None = None
    model_id: str = "flux"
    width: int = 512
    height: int = 512
    samples: int = 1
    num_inference_steps: int = 20
    safety_checker: bool = True
    safety_checker_type: SafetyCheckerType = "sensitive_content_text"
    seed: int | None = None
    guidance_scale: float = attrs.field(default=7.5, converter=_int_to_float)
    injected_noise_alpha: float = attrs.field(default=0.75, converter=_int_to_float)
    sigma_threshold: float = attrs.field(default=0.45, converter=_int_to_float)
    true_cfg_scale: float = attrs.field(default=1.0, converter=_int_to_float)
    use_cfg_zero_star: bool = True
    use_zero_init: bool = False
    zero_steps: int = 0
    base64: bool = False
    webhook: str | None = None
    track_id: str | int | None = None
    temp: bool = False
    extra: Mapping[str, Any] = attrs.field(default=_NO_EXTRA, converter=_freeze_extra, hash=False)

    def __attrs_post_init__(self) -> None:
        # The field checks (_REQUEST_CHECKS) run, in field order, only when the one-pass
        # test of the usual values does not pass: it accepts nothing they would refuse.
        if not _usual_request(self):
            for field, check in _request_checks():
                check(self, field, getattr(self, field.name))
        if self.zero_steps > self.num_inference_steps:
            raise RequestValidationError(
                "zero_steps",
                self.zero_steps,
                f"an integer in 0..num_inference_steps ({self.num_inference_steps})",
            )

    def replace(self, **changes: Any) -> Text2ImgRequest:
        """A copy with *changes* applied (validated again)."""
        return attrs.evolve(self, **changes)


#: The check of each field of a request, in field order (attrs would run them one call
#: per field; ``__attrs_post_init__`` runs them only when ``_usual_request`` fails).
_REQUEST_CHECKS: dict[str, Any] = {
    "prompt": _check_prompt,
    "negative_prompt": _opt_text(MAX_PROMPT_LENGTH),
    "model_id": _check_model_id,
    "width": _int_in(1, 1024),
    "height": _int_in(1, 1024),
    "samples": _int_in(1, 4),
    "num_inference_steps": _int_in(1, None),
    "safety_checker": _is_bool,
    "safety_checker_type": _check_safety_type,
    "seed": _check_seed,
    "guidance_scale": _float_in(1, 20),
    "injected_noise_alpha": _float_in(0, 1),
    "sigma_threshold": _float_in(0, 1),
    "true_cfg_scale": _float_in(0, 10),
    "use_cfg_zero_star": _is_bool,
    "use_zero_init": _is_bool,
    "zero_steps": _int_in(0, None),
    "base64": _is_bool,
    "webhook": _check_webhook,
    "track_id": _check_track_id,
    "temp": _is_bool,
    "extra": _check_extra,
}


@functools.cache
def _request_checks() -> tuple[tuple[attrs.Attribute[Any], Any], ...]:
    return tuple((f, _REQUEST_CHECKS[f.name]) for f in attrs.fields(Text2ImgRequest))


def _usual_request(r: Text2ImgRequest) -> bool:
    """True when every field holds a value of its usual type within its range: a subset
    of what the field checks accept (tests hold it to them on every field's edge values
    and on hypothesis' mixes)."""
    prompt = r.prompt
    negative = r.negative_prompt
    model_id = r.model_id
    width, height, samples, steps = r.width, r.height, r.samples, r.num_inference_steps
    seed = r.seed
    guidance, alpha, sigma, cfg = (
        r.guidance_scale,
        r.injected_noise_alpha,
        r.sigma_threshold,
        r.true_cfg_scale,
    )
    track_id = r.track_id
    return (
        type(prompt) is str
        and 0 < len(prompt) <= MAX_PROMPT_LENGTH
        and not prompt.isspace()
        and "\x00" not in prompt
        and (negative is None or (type(negative) is str and len(negative) <= MAX_PROMPT_LENGTH))
        and type(model_id) is str
        and 0 < len(model_id) <= 200
        and not model_id.isspace()
        and type(width) is int
        and 1 <= width <= 1024
        and type(height) is int
        and 1 <= height <= 1024
        and type(samples) is int
        and 1 <= samples <= 4
        and type(steps) is int
        and steps >= 1
        and type(r.safety_checker) is bool
        and r.safety_checker_type in SAFETY_CHECKER_TYPES
        and (seed is None or (type(seed) is int and 0 <= seed <= MAX_SEED))
        and type(guidance) is float
        and 1.0 <= guidance <= 20.0
        and type(alpha) is float
        and 0.0 <= alpha <= 1.0
        and type(sigma) is float
        and 0.0 <= sigma <= 1.0
        and type(cfg) is float
        and 0.0 <= cfg <= 10.0
        and type(r.use_cfg_zero_star) is bool
        and type(r.use_zero_init) is bool
        and type(r.zero_steps) is int
        and r.zero_steps >= 0
        and type(r.base64) is bool
        and r.webhook is None
        and (
            track_id is None
            or type(track_id) is int
            or (type(track_id) is str and 0 < len(track_id) <= MAX_TRACK_ID_LENGTH)
        )
        and type(r.temp) is bool
        and not r.extra
    )


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
