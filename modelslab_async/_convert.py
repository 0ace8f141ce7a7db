"""The one cattrs converter: request -> wire body, wire answers -> models.

Every quirk of the API's JSON is absorbed here (and in ``_scalars``, which reads its loose
scalars, and ``_error_map``, which maps its error answers to exceptions) and nowhere else:
``messege``/``message``, ids as int, string, ``""`` or null, numbers as strings,
``output: ""``, ``W``/``H``/``steps`` in older ``meta``, ``"yes"``/``"no"`` bools, and
extras such as ``tip``/``tips``/``webhook_status``.
"""

from __future__ import annotations

import hashlib
import json
import operator
import re
import time
from collections.abc import Mapping
from typing import Any

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, override

from ._error_map import api_message, error_from_answer
from ._errors import JobId, RequestValidationError, ResponseFormatError
from ._redact import excerpt
from ._scalars import (
    to_bool,
    to_float,
    to_int,
    to_job_id,
    to_job_id_or_none,
    to_links,
    to_opt_bool,
    to_opt_float,
    to_opt_int,
    to_opt_str,
    to_str,
)
from ._types import (
    DOCUMENTED_FIELDS,
    REQUEST_FIELD,
    REQUEST_FIELDS,
    Generation,
    Job,
    Meta,
    Text2ImgRequest,
)

converter = cattrs.Converter()

converter.register_structure_hook(bool, to_bool)
converter.register_structure_hook(int, to_int)
converter.register_structure_hook(float, to_float)
converter.register_structure_hook(str, to_str)


def _register_exact(type_: Any, hook: Any) -> None:
    """Hook for a non-class type (a union, a generic alias), matched by equality."""
    converter.register_structure_hook_func(lambda t: t == type_, hook)


_register_exact(bool | None, to_opt_bool)
_register_exact(int | None, to_opt_int)
_register_exact(float | None, to_opt_float)
_register_exact(str | None, to_opt_str)
_register_exact(int | str | None, to_job_id)
_register_exact(int | str, to_job_id)
_register_exact(tuple[str, ...], to_links)
_register_exact(Mapping[str, Any], lambda v, _: dict(v or {}))


# --- meta ----------------------------------------------------------------------------------

_META_ALIASES = {"W": "width", "H": "height", "steps": "num_inference_steps"}
_META_FIELDS = frozenset(f.name for f in attrs.fields(Meta)) - {"extra"}
_META_TYPES = {f.name: f.type or Any for f in attrs.fields(attrs.resolve_types(Meta))}
_structure_meta_fields = make_dict_structure_fn(Meta, converter)
_FIELD_ERRORS = (ValueError, TypeError, cattrs.BaseValidationError)


def _structure_meta(value: Any, _: Any = None) -> Meta:
    """The ``meta`` object: known fields typed, the others (and unreadable values) in extra."""
    if not isinstance(value, Mapping):
        raise ValueError(f"meta is not an object: {type(value).__name__}")
    known = {name: value[name] for name in value.keys() & _META_FIELDS}
    extra = {k: v for k, v in value.items() if k not in _META_FIELDS}
    for alias in value.keys() & _META_ALIASES.keys():  # W, H, steps: older answers
        target = _META_ALIASES[alias]
        if target not in known:
            known[target] = extra.pop(alias)
    try:
        return _structure_meta_fields({**known, "extra": extra}, Meta)
    except _FIELD_ERRORS:
        # A field the server sends in an unexpected form is kept raw rather than failing
        # the answer: find which, field by field.
        for name in list(known):
            try:
                converter.structure(known[name], _META_TYPES[name])
            except _FIELD_ERRORS:
                extra[name] = known.pop(name)
        return _structure_meta_fields({**known, "extra": extra}, Meta)


converter.register_structure_hook(Meta, _structure_meta)
# An empty meta (PHP sends [] for an empty object) is no meta.
_register_exact(Meta | None, lambda v, _: _structure_meta(v) if v else None)

# --- jobs and generations ------------------------------------------------------------------

# What the SDK itself adds to an answer (the request, the message in either spelling, the
# arrival time) travels in keys no answer can have (a leading space), so that an answer is
# structured in one pass: the hook of the request passes it through as it is.
_SDK = " "
_register_exact(Text2ImgRequest | None, lambda v, _: v)
_structure_generation = make_dict_structure_fn(
    Generation,
    converter,
    generation_time=override(rename="generationTime"),
    request=override(rename=_SDK + "request"),
    images=override(omit=True),
)
_structure_job = make_dict_structure_fn(
    Job,
    converter,
    fetch_url=override(rename="fetch_result"),
    message=override(rename=_SDK + "message"),
    request=override(rename=_SDK + "request"),
    submitted_at=override(rename=_SDK + "submitted_at"),
)
converter.register_structure_hook(Generation, _structure_generation)
converter.register_structure_hook(Job, _structure_job)

#: Python attribute -> wire name, so error paths point into the answer as sent.
_WIRE_NAMES = {"generation_time": "generationTime", "fetch_url": "fetch_result"}


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

_WIRE_FIELDS = tuple(f.name for f in REQUEST_FIELDS)
_BOOL_FIELDS = tuple(f.name for f in REQUEST_FIELDS if f.kind == "bool")
_wire_values = operator.attrgetter(*_WIRE_FIELDS)


def request_to_wire(request: Text2ImgRequest) -> dict[str, Any]:
    """The JSON body of a request, without the key: bools as ``"yes"``/``"no"``.

    ``seed``, ``webhook`` and ``track_id`` are always present (null for random / none), as
    in the endpoint document; ``negative_prompt`` is left out when None. ``extra`` fields
    are merged in as given.
    """
    body = dict(zip(_WIRE_FIELDS, _wire_values(request), strict=True))
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
    given = data.get("extra")
    if given is not None and not isinstance(given, Mapping):
        raise RequestValidationError("extra", given, "a JSON object of undocumented fields")
    extra: dict[str, Any] = dict(given or {})
    fields: dict[str, Any] = {}
    for name, value in data.items():
        if name in DOCUMENTED_FIELDS:
            fields[name] = _loose_field(name, value)
        elif name != "extra":
            extra[name] = value
    if "prompt" not in fields:
        raise RequestValidationError("prompt", None, "a non-empty string (prompt is required)")
    return Text2ImgRequest(**fields, extra=extra)


#: Field kind -> the reader of its loose forms ("512", "7.5", "yes").
_LOOSE_READERS = {"bool": to_bool, "int": to_int, "float": to_float}


def _loose_field(name: str, value: Any) -> Any:
    """A loose value (``"512"``, ``"yes"``) as its field's type; a value it cannot convert
    is left as it is, so that the request's validator reports it with the allowed range."""
    field = REQUEST_FIELD[name]
    if value is None:
        return None
    if field.optional and value == "":  # "seed": "" is a random seed, as null is
        return None if field.kind == "int" else value
    read = _LOOSE_READERS.get(field.kind)
    if read is None:
        return value
    try:
        return read(value)
    except (ValueError, OverflowError):
        return value


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
            payload = {**data, _SDK + "request": request}
            if job_id is not None and to_job_id_or_none(data.get("id")) is None:
                payload["id"] = job_id
            return _structure_generation(payload, Generation)
        if status == "processing":
            found = to_job_id_or_none(data.get("id"))
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
            payload = {
                **data,
                "id": found,
                _SDK + "message": api_message(data),
                _SDK + "request": request,
                _SDK + "submitted_at": time.time(),
            }
            if not job_meta:
                payload.pop("meta", None)
            return _structure_job(payload, Job)
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
