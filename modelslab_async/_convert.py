"""The one cattrs converter: request -> wire body, wire answers -> models.

Every quirk of the API's JSON lives here and nowhere else: ``messege``/``message`` (or a
``message`` object of per-field errors), ids as int, string, ``""`` or null, numbers as
strings, ``output: ""``, ``W``/``H``/``steps`` in older ``meta``, ``"yes"``/``"no"`` bools,
extras such as ``tip``/``tips``/``webhook_status``, and the error answer -> exception map.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, override

from ._errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    GenerationFailed,
    JobId,
    ModelsLabError,
    RateLimitError,
    RequestValidationError,
    ResponseFormatError,
    ServerError,
)
from ._redact import excerpt
from ._types import DOCUMENTED_FIELDS, Generation, Job, Meta, Text2ImgRequest, values_getter

converter = cattrs.Converter()

#: The API's yes/no words (lower case) and what they mean.
_BOOL_WORDS = dict.fromkeys(("yes", "true", "1", "y", "on"), True) | dict.fromkeys(
    ("no", "false", "0", "n", "off", "none", ""), False
)
_BOOL_FIELDS = tuple(f.name for f in attrs.fields(Text2ImgRequest) if f.type in ("bool", bool))


# --- scalar hooks --------------------------------------------------------------------------


def _to_bool(value: Any, _: Any = None) -> bool:
    if value is True or value is False:
        return value
    if isinstance(value, str):
        word = _BOOL_WORDS.get(value)  # "yes"/"no" as sent, without strip() and lower()
        if word is None:
            word = _BOOL_WORDS.get(value.strip().lower())
        if word is not None:
            return word
    elif isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    raise ValueError(f"not a yes/no value: {value!r}")


def _to_opt_bool(value: Any, _: Any = None) -> bool | None:
    if value is None or value is True or value is False:
        return value
    try:
        return _to_bool(value)
    except ValueError:
        return None


def _to_int(value: Any, _: Any = None) -> int:
    if type(value) is int:
        return value
    if isinstance(value, bool):
        raise ValueError(f"not an integer: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            number = float(text)
            if number.is_integer():
                return int(number)
    raise ValueError(f"not an integer: {value!r}")


def _to_opt_int(value: Any, _: Any = None) -> int | None:
    if value is None or type(value) is int:
        return value
    if value == "":
        return None
    return _to_int(value)


def _to_float(value: Any, _: Any = None) -> float:
    if type(value) is float:
        return value
    if isinstance(value, bool):
        raise ValueError(f"not a number: {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return float(value.strip())
    raise ValueError(f"not a number: {value!r}")


def _to_opt_float(value: Any, _: Any = None) -> float | None:
    if value is None or value == "":
        return None
    return _to_float(value)


def _to_opt_str(value: Any, _: Any = None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"not a string: {value!r}")


def _to_job_id(value: Any, _: Any = None) -> JobId | None:
    """Ids arrive as int, digit string, other string, ``""`` or null."""
    if type(value) is int:
        return value
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"not an id: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        return int(text) if text.isdigit() else text
    raise ValueError(f"not an id: {value!r}")


def _to_links_of(value: list[Any] | tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(str(v) for v in value if isinstance(v, str) and v)


def _to_links(value: Any, _: Any = None) -> tuple[str, ...]:
    """``output``/``future_links``: a list of URLs, ``""``, null, or a single URL string."""
    if not value:  # null, "", []
        if value is None or value == "" or isinstance(value, list | tuple):
            return ()
        raise ValueError(f"not a list of URLs: {value!r}")
    if type(value) is list and len(value) == 1:  # one image, the usual answer
        (link,) = value
        return (link,) if type(link) is str and link else _to_links_of(value)
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple):
        return _to_links_of(value)
    raise ValueError(f"not a list of URLs: {value!r}")


converter.register_structure_hook(bool, _to_bool)
converter.register_structure_hook(int, _to_int)
converter.register_structure_hook(float, _to_float)
converter.register_structure_hook(str, lambda v, _: v if isinstance(v, str) else str(v))


def _register_exact(type_: Any, hook: Any) -> None:
    """Hook for a non-class type (a union, a generic alias), matched by equality."""
    converter.register_structure_hook_func(lambda t: t == type_, hook)


_register_exact(bool | None, _to_opt_bool)
_register_exact(int | None, _to_opt_int)
_register_exact(float | None, _to_opt_float)
_register_exact(str | None, _to_opt_str)
_register_exact(int | str | None, _to_job_id)
_register_exact(int | str, _to_job_id)
_register_exact(tuple[str, ...], _to_links)
_register_exact(Mapping[str, Any], lambda v, _: dict(v or {}))


# --- fast paths ---------------------------------------------------------------------------
#
# Every answer goes through these, so each of Meta, Job and Generation also has a function
# of straight-line code, made once below, that builds it as the converter would when each
# field already has its type or one of the converter's plain widenings (int -> float,
# "yes"/"no" -> bool). Anything else returns None and goes through the converter, which
# also reports errors with their path. The tests check that both give the same objects.

_MISSING = object()
#: An id or track id sent as text (as _to_job_id reads it, when it needs no stripping).
_ID_TEXT = ("type(x) is str and x and x == x.strip()", "(int(x) if x.isdigit() else x)")
#: Field type -> (test that keeps the value as is, optional (test, conversion) widening).
_FAST_CHECKS: dict[Any, tuple[str, tuple[str, str] | None]] = {
    str: ("type(x) is str", None),
    str | None: ("x is None or type(x) is str", None),
    int | None: ("x is None or type(x) is int", None),
    float: ("type(x) is float", ("type(x) is int", "float(x)")),
    float | None: ("x is None or type(x) is float", ("type(x) is int", "float(x)")),
    bool | None: (
        "x is None or x is True or x is False",
        ("type(x) is str and x in _BOOL_WORDS", "_BOOL_WORDS[x]"),
    ),
    int | str: ("type(x) is int", _ID_TEXT),
    int | str | None: ("x is None or type(x) is int", _ID_TEXT),
}


def _on(name: str, code: str) -> str:
    """A check of ``_FAST_CHECKS`` (written on ``x``) applied to the variable *name*."""
    return re.sub(r"\bx\b", name, code)


def _fast_structurer(
    cls: type,
    *,
    renames: Mapping[str, str] | None = None,
    omit: frozenset[str] = frozenset(),
    hooks: Mapping[str, str] | None = None,
    extra: str | None = None,
) -> Callable[[Mapping[str, Any], dict[str, Any]], Any]:
    """``fast(data, given)``: *cls* from the answer fields *data* plus the attributes
    *given* (set by the SDK; they win over the answer's), or None when the converter has
    to do it (see above). *hooks* names a function for fields of other types (``f(value)``,
    which may raise ValueError); *extra* collects the keys of no field (the ``meta``
    object). A missing field reads as its default, which every check passes and every hook
    maps to the default again, so it is passed as the class would set it."""
    renames = renames or {}
    hooks = hooks or {}
    lines = ["def fast(data, given):", " get = data.get"]
    names = []
    args = []
    defaults: dict[str, Any] = {}
    for i, field in enumerate(attrs.fields(attrs.resolve_types(cls))):
        if field.name in omit or field.name == extra:
            continue
        if isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
            raise TypeError(f"{cls.__name__}.{field.name}: a factory default has no fast path")
        wire = renames.get(field.name, field.name)
        names.append(wire)
        default = "_MISSING"
        if field.default is not attrs.NOTHING:
            default = f"_d{i}"
            defaults[default] = field.default
        value = f"v{i}"
        args.append(f"{field.name!r}: {value}")
        lines.append(f" {value} = get({wire!r}, {default})")
        if field.name in hooks:
            lines.append(f" {value} = {hooks[field.name]}({value})")
            continue
        keep, widen = _FAST_CHECKS[field.type]
        keep = _on(value, keep)
        if widen is None:
            lines += [f" if not ({keep}):", "  return None"]
        else:
            test, conversion = _on(value, widen[0]), _on(value, widen[1])
            lines += [f" if not ({keep}):", f"  if {test}:", f"   {value} = {conversion}"]
            lines += ["  else:", "   return None"]
    if extra is not None:
        # A copy without the known keys keeps the answer's order of the others.
        lines += [f" {extra} = dict(data)", " for k in _KNOWN & data.keys():", f"  del {extra}[k]"]
        args.append(f"{extra!r}: {extra}")
    lines.append(f" return _cls(**{{{', '.join(args)}, **given}})")
    namespace: dict[str, Any] = {
        "_MISSING": _MISSING,
        "_BOOL_WORDS": _BOOL_WORDS,
        "_cls": cls,
        "_KNOWN": frozenset(names),
        **defaults,
        **{name: globals()[name] for name in set(hooks.values())},
    }
    exec(compile("\n".join(lines), f"<fast structure {cls.__name__}>", "exec"), namespace)
    built: Callable[[Mapping[str, Any], dict[str, Any]], Any] = namespace["fast"]
    return built


def _fast(fn: Callable[[Mapping[str, Any], dict[str, Any]], Any], data: Any, given: Any) -> Any:
    """``fn(data, given)``, or None when it fails in any way: the converter then decides."""
    try:
        return fn(data, given)
    except Exception:  # the converter's own path reports it, with the field's path
        return None


# --- meta ----------------------------------------------------------------------------------

_META_ALIASES = {"W": "width", "H": "height", "steps": "num_inference_steps"}
_META_FIELDS = frozenset(f.name for f in attrs.fields(Meta)) - {"extra"}
_META_TYPES = {f.name: f.type or Any for f in attrs.fields(attrs.resolve_types(Meta))}
_structure_meta_known = make_dict_structure_fn(Meta, converter)


def _structure_meta(value: Any, _: Any = None) -> Meta:
    if not isinstance(value, Mapping):
        raise ValueError(f"meta is not an object: {type(value).__name__}")
    if not (value.keys() & _META_ALIASES.keys()):
        fast: Meta | None = _fast(_fast_meta, value, {})
        if fast is not None:
            return fast
    return _structure_meta_slow(value)


def _structure_meta_slow(value: Mapping[str, Any]) -> Meta:
    """The converter's way, for what the fast path does not take."""
    # Set operations and comprehensions, not a loop of lookups: every answer has a meta.
    names = value.keys()
    known: dict[str, Any] = {name: value[name] for name in names & _META_FIELDS}
    extra: dict[str, Any] = {k: v for k, v in value.items() if k not in _META_FIELDS}
    for alias in names & _META_ALIASES.keys():  # W, H, steps: older answers
        target = _META_ALIASES[alias]
        if target not in known:
            known[target] = extra.pop(alias)
    try:
        return _structure_meta_known({**known, "extra": extra}, Meta)
    except (ValueError, TypeError, cattrs.BaseValidationError):
        # A field the server sends in an unexpected form is kept raw rather than failing
        # the answer: find which, field by field (the slow path, taken only then).
        for name in list(known):
            try:
                converter.structure(known[name], _META_TYPES[name])
            except (ValueError, TypeError, cattrs.BaseValidationError):
                extra[name] = known.pop(name)
        return _structure_meta_known({**known, "extra": extra}, Meta)


_fast_meta = _fast_structurer(Meta, extra="extra")
converter.register_structure_hook(Meta, _structure_meta)


def _meta_or_none(value: Any, _: Any = None) -> Meta | None:
    return None if not value else _structure_meta(value)


_register_exact(Meta | None, _meta_or_none)

# What the SDK itself adds to an answer (the request, the message in either spelling, the
# arrival time) travels in keys no answer can have (a leading space), so that an answer is
# built in one pass: the hooks below pass these values through as they are.
_SDK = " "
_register_exact(Text2ImgRequest | None, lambda v, _: v)
converter.register_structure_hook(
    Generation,
    make_dict_structure_fn(
        Generation,
        converter,
        generation_time=override(rename="generationTime"),
        request=override(rename=_SDK + "request"),
        images=override(omit=True),
    ),
)
converter.register_structure_hook(
    Job,
    make_dict_structure_fn(
        Job,
        converter,
        fetch_url=override(rename="fetch_result"),
        message=override(rename=_SDK + "message"),
        request=override(rename=_SDK + "request"),
        submitted_at=override(rename=_SDK + "submitted_at"),
    ),
)

#: Python attribute -> wire name, so error paths point into the answer as sent.
_WIRE_NAMES = {"generation_time": "generationTime", "fetch_url": "fetch_result"}

_fast_generation = _fast_structurer(
    Generation,
    renames=_WIRE_NAMES,
    omit=frozenset({"images", "request"}),
    hooks={"output": "_to_links", "proxy_links": "_to_links", "meta": "_meta_or_none"},
)
_JOB_HOOKS = {"future_links": "_to_links", "proxy_links": "_to_links"}
_JOB_GIVEN = frozenset({"id", "request", "message", "submitted_at"})
_fast_job = _fast_structurer(
    Job, renames=_WIRE_NAMES, omit=_JOB_GIVEN, hooks={**_JOB_HOOKS, "meta": "_meta_or_none"}
)
_fast_job_no_meta = _fast_structurer(
    Job, renames=_WIRE_NAMES, omit=_JOB_GIVEN | {"meta"}, hooks=_JOB_HOOKS
)


def _wire_path(where: str) -> str:
    for name, wire in _WIRE_NAMES.items():
        where = re.sub(rf"\$\.{name}\b", f"$.{wire}", where)
    return where


def _id_from_fetch_url(url: Any) -> int | None:
    """The job id at the end of a ``fetch_result`` URL (``.../fetch/123``), if any."""
    if not isinstance(url, str):
        return None
    found = re.search(r"/fetch/(\d+)/*$", url.strip())
    return int(found.group(1)) if found else None


# --- request <-> wire ----------------------------------------------------------------------


_REQUEST_FIELDS = tuple(f.name for f in attrs.fields(Text2ImgRequest) if f.name != "extra")
_request_values = values_getter(_REQUEST_FIELDS)


def request_to_wire(request: Text2ImgRequest) -> dict[str, Any]:
    """The JSON body of a request, without the key: bools as ``"yes"``/``"no"``.

    ``seed``, ``webhook`` and ``track_id`` are always present (null for random / none), as
    in the endpoint document; ``negative_prompt`` is left out when None. ``extra`` fields
    are merged in as given.
    """
    body = dict(zip(_REQUEST_FIELDS, _request_values(request), strict=True))
    for name in _BOOL_FIELDS:
        body[name] = "yes" if body[name] else "no"
    if body["negative_prompt"] is None:
        del body["negative_prompt"]
    if request.extra:
        body.update(request.extra)
    return body


def request_from_wire(data: Mapping[str, Any]) -> Text2ImgRequest:
    """Build a request from a JSON-like mapping (a JSONL line, a wire body, CLI fields).

    Numbers may be strings and yes/no fields may be ``"yes"``/``"no"``; unknown fields go to
    ``extra``. A ``key`` field is refused. Raises :class:`RequestValidationError`.
    """
    if not isinstance(data, Mapping):
        raise RequestValidationError("request", data, "a JSON object of request fields")
    if "key" in data:
        raise RequestValidationError(
            "key", "<redacted>", "no API key in a request (the client adds it)"
        )
    kwargs: dict[str, Any] = {}
    given = data.get("extra")
    if given is not None and not isinstance(given, Mapping):  # was dropped without a word
        raise RequestValidationError("extra", given, "a JSON object of undocumented fields")
    extra: dict[str, Any] = dict(given or {})
    types = {f.name: f.type for f in attrs.fields(Text2ImgRequest)}
    for name, value in data.items():
        if name == "extra":
            continue
        if name not in DOCUMENTED_FIELDS:
            extra[name] = value
            continue
        kwargs[name] = _coerce_field(name, value, types[name])
    if "prompt" not in kwargs:
        raise RequestValidationError("prompt", None, "a non-empty string (prompt is required)")
    return Text2ImgRequest(**kwargs, extra=extra)


def coerce_request(
    request: Text2ImgRequest | Mapping[str, Any] | str | None, fields: Mapping[str, Any]
) -> Text2ImgRequest:
    """A :class:`Text2ImgRequest` from a request, a mapping, a prompt string, or fields."""
    if fields and not isinstance(request, Mapping):
        _check_field_names(fields)
    if isinstance(request, Text2ImgRequest):
        return request.replace(**fields) if fields else request
    if isinstance(request, str):
        return Text2ImgRequest(prompt=request, **fields)
    if isinstance(request, Mapping):
        return request_from_wire({**request, **fields})
    if request is None:
        if "prompt" not in fields:
            raise RequestValidationError("prompt", None, "a non-empty string (prompt is required)")
        return Text2ImgRequest(**fields)
    raise RequestValidationError(
        "request", type(request).__name__, "a Text2ImgRequest, a mapping of fields or a prompt"
    )


_REQUEST_FIELD_NAMES = frozenset(f.name for f in attrs.fields(Text2ImgRequest))


def _check_field_names(fields: Mapping[str, Any]) -> None:
    """Keyword fields must be request fields: ``key=...`` (the API body's name for the key)
    or a misspelt field is a RequestValidationError, not a TypeError from the constructor.
    Their values are not quoted: one may be a key under another name."""
    known = _REQUEST_FIELD_NAMES
    for name in fields:
        if name == "key":
            raise RequestValidationError(
                "key", "<redacted>", "no API key in a request (the client adds it)"
            )
        if name not in known:
            raise RequestValidationError(
                name,
                "<unknown field>",
                "a Text2ImgRequest field (undocumented API fields go in extra={...})",
            )


def _coerce_field(name: str, value: Any, type_: Any) -> Any:
    """Loose input -> typed value; leaves the value unchanged when it cannot convert, so the
    request's own validator reports it with the allowed range."""
    if value is None:
        return None
    try:
        if type_ in ("bool", bool):
            return _to_bool(value)
        if type_ in ("int", int):
            return _to_int(value)
        if type_ in ("float", float):
            return _to_float(value)
        if type_ in ("int | None", int | None):
            return _to_opt_int(value)
        if type_ in ("str | int | None",) and isinstance(value, str) and value.strip().isdigit():
            return value
    except (ValueError, OverflowError):
        return value
    return value


def fingerprint(request: Text2ImgRequest) -> str:
    """sha256 (hex) of the canonical wire body: the identity of a request in a manifest."""
    return wire_fingerprint(request_to_wire(request))


#: ``json.dumps(..., sort_keys=True, separators=(",", ":"))``, without building an encoder
#: per call.
_canonical_json = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode


def wire_fingerprint(wire: Mapping[str, Any]) -> str:
    """:func:`fingerprint` of a body :func:`request_to_wire` made."""
    return hashlib.sha256(_canonical_json(wire).encode()).hexdigest()


def request_to_json(request: Text2ImgRequest) -> dict[str, Any]:
    """A JSON-ready dict of the request (Python field names and types)."""
    data = attrs.asdict(request, recurse=False)
    data["extra"] = dict(request.extra)
    return data


# --- answers -------------------------------------------------------------------------------


def decode_json(body: bytes, *, status_code: int | None = None, url: str | None = None) -> Any:
    """Decode a JSON answer; an HTML page or malformed JSON raises ResponseFormatError."""
    if body[:1] == b"{":  # the usual answer: no copy for the HTML check
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError):
            pass  # reported below
    text = body.lstrip()
    if text[:1] == b"<" or text[:15].lower().startswith(b"<!doctype"):
        raise ResponseFormatError(
            f"expected JSON, got an HTML page (HTTP {status_code}): {excerpt(body)}",
            status_code=status_code,
            url=url,
            body=excerpt(body),
        )
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ResponseFormatError(
            f"malformed JSON (HTTP {status_code}): {excerpt(body)}",
            status_code=status_code,
            url=url,
            body=excerpt(body),
        ) from exc


def api_message(data: Mapping[str, Any]) -> str | None:
    """The API's message as text, whatever its spelling or shape."""
    raw = data.get("message", data.get("messege"))
    if raw is None:
        raw = data.get("error")
    if raw is None:
        return None
    if isinstance(raw, Mapping):
        parts = []
        for field, errors in raw.items():
            if isinstance(errors, list | tuple):
                errors = "; ".join(str(e) for e in errors)
            parts.append(f"{field}: {errors}")
        return " | ".join(parts)
    if isinstance(raw, list | tuple):
        return "; ".join(str(e) for e in raw)
    return str(raw)


def _retry_after(data: Mapping[str, Any], header: float | None) -> float | None:
    value = data.get("retry_after")
    try:
        parsed = _to_float(value) if value is not None else None
    except ValueError:
        parsed = None
    if parsed is not None and math.isfinite(parsed) and parsed >= 0:
        return parsed
    return header


def error_from_answer(
    data: Mapping[str, Any] | None,
    *,
    status_code: int | None,
    url: str | None = None,
    job_id: JobId | None = None,
    retry_after: float | None = None,
    body: bytes = b"",
) -> ModelsLabError:
    """Map an error answer (JSON ``error``/``failed`` or an HTTP error status) to its class."""
    data = data if isinstance(data, Mapping) else {}
    message = api_message(data)
    text = (message or "").lower()
    status = str(data.get("status", "")).lower()
    shown = excerpt(body) if body else None
    if job_id is None:
        job_id = _to_job_id_safe(data.get("id"))
    http = f"HTTP {status_code}" if status_code is not None else "answer"
    kw: dict[str, Any] = {
        "status_code": status_code,
        "api_message": message,
        "url": url,
        "job_id": job_id,
        "body": shown,
    }
    if (
        status_code in (401, 403)
        or "api key" in text
        or "invalid key" in text
        or "unauthor" in text
    ):
        return AuthenticationError(
            f"authentication failed ({http}): {message or 'no message'}", **kw
        )
    if (
        status_code == 429
        or "rate limit" in text
        or "too many" in text
        or "queue full" in text
        or "queued requests" in text
    ):
        wait = _retry_after(data, retry_after)
        return RateLimitError(
            f"rate limited ({http}): {message or 'no message'}"
            + (f"; retry after {wait:g}s" if wait is not None else ""),
            retry_after=wait,
            **kw,
        )
    if status == "failed" or "try again" in text:
        return GenerationFailed(job_id, message, transient="try again" in text)
    if status_code is not None and status_code >= 500:
        return ServerError(f"server error ({http}): {message or shown or 'no body'}", **kw)
    raw = data.get("message", data.get("messege"))
    if (
        isinstance(raw, Mapping)
        or status_code in (400, 404, 405, 413, 422)
        or "not found" in text
        or "required" in text
        or "invalid" in text
        or "must be" in text
    ):
        return BadRequestError(f"request rejected ({http}): {message or 'no message'}", **kw)
    return APIError(f"API error ({http}): {message or shown or 'no message'}", **kw)


def _to_job_id_safe(value: Any) -> JobId | None:
    try:
        return _to_job_id(value)
    except ValueError:
        return None


def structure_answer(
    data: Any,
    *,
    status_code: int | None = 200,
    url: str | None = None,
    request: Text2ImgRequest | None = None,
    job_id: JobId | None = None,
    retry_after: float | None = None,
    body: bytes = b"",
    job_meta: bool = True,
) -> Job | Generation:
    """Turn a decoded answer into a :class:`Job` or :class:`Generation`, or raise.

    ``error``/``failed`` answers, and answers without a known status sent with an HTTP
    error status, raise the class :func:`error_from_answer` picks; otherwise an unknown
    status or an answer of the wrong shape raises ResponseFormatError. A processing answer
    without an id takes *job_id*, else the id at the end of its ``fetch_result`` URL;
    with ``job_meta=False`` its ``meta`` is left out (None).
    """
    if not isinstance(data, Mapping):
        raise ResponseFormatError(
            f"expected a JSON object, got {type(data).__name__}: {excerpt(body or repr(data))}",
            status_code=status_code,
            url=url,
            body=excerpt(body or repr(data)),
        )
    status = str(data.get("status", "")).strip().lower()
    try:
        if status == "success":
            given: dict[str, Any] = {"request": request}
            if job_id is not None and _to_job_id_safe(data.get("id")) is None:
                given["id"] = job_id
            done: Generation | None = _fast(_fast_generation, data, given)
            if done is not None:
                return done
            payload = {**data, _SDK + "request": request}
            if "id" in given:
                payload["id"] = job_id
            return converter.structure(payload, Generation)
        if status == "processing":
            found = _to_job_id_safe(data.get("id"))
            if found is None:
                found = job_id
            if found is None:
                found = _id_from_fetch_url(data.get("fetch_result"))
            if found is None:
                raise ResponseFormatError(
                    f"a processing answer without a job id: {excerpt(body or json.dumps(data))}",
                    status_code=status_code,
                    url=url,
                    body=excerpt(body or json.dumps(data)),
                    path="$.id",
                )
            given = {
                "id": found,
                "message": api_message(data),
                "request": request,
                "submitted_at": time.time(),
            }
            job: Job | None = _fast(_fast_job if job_meta else _fast_job_no_meta, data, given)
            if job is not None:
                return job
            payload = {
                **data,
                "id": found,
                _SDK + "message": given["message"],
                _SDK + "request": request,
                _SDK + "submitted_at": given["submitted_at"],
            }
            if not job_meta:
                payload.pop("meta", None)
            return converter.structure(payload, Job)
    except cattrs.BaseValidationError as exc:
        where = _wire_path("; ".join(cattrs.transform_error(exc, path="$")))
        raise ResponseFormatError(
            f"unexpected answer shape ({where})",
            status_code=status_code,
            url=url,
            body=excerpt(body or json.dumps(data, default=str)),
            path=where,
        ) from None  # cattrs' own errors quote the offending values, which may echo the key
    if status in ("error", "failed") or (status_code is not None and status_code >= 400):
        # An HTTP error status with a JSON body of another shape (``{"message":
        # "Unauthenticated."}``) is classified by its status, not reported as a format error.
        raise error_from_answer(
            data,
            status_code=status_code,
            url=url,
            job_id=job_id,
            retry_after=retry_after,
            body=body,
        )
    raise ResponseFormatError(
        f"unknown status {data.get('status')!r}: {excerpt(body or json.dumps(data, default=str))}",
        status_code=status_code,
        url=url,
        body=excerpt(body or json.dumps(data, default=str)),
        path="$.status",
    )


def parse_answer(
    body: bytes,
    *,
    status_code: int | None = 200,
    url: str | None = None,
    request: Text2ImgRequest | None = None,
    job_id: JobId | None = None,
    retry_after: float | None = None,
    job_meta: bool = True,
) -> Job | Generation:
    """Decode and structure one answer body (see :func:`structure_answer`)."""
    data = decode_json(body, status_code=status_code, url=url)
    return structure_answer(
        data,
        status_code=status_code,
        url=url,
        request=request,
        job_id=job_id,
        retry_after=retry_after,
        body=body,
        job_meta=job_meta,
    )
