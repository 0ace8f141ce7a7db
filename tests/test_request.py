"""Text2ImgRequest: defaults, validation bounds, wire body, and the wire round trip."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import modelslab_async as m
from modelslab_async import RequestValidationError, Text2ImgRequest, _types
from modelslab_async._convert import (
    fingerprint,
    request_from_wire,
    request_to_json,
    request_to_wire,
)
from modelslab_async._types import (
    DOCUMENTED_FIELDS,
    REQUEST_FIELDS,
    REQUIRED,
    SAFETY_CHECKER_TYPES,
    request_fields_markdown,
)

ROOT = Path(__file__).resolve().parent.parent
MAX_SEED = 2**32 - 1


# --- strategies ----------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
extra_names = st.text(min_size=1, max_size=16).filter(
    lambda s: s not in DOCUMENTED_FIELDS and s not in ("key", "extra")
)
prompts = st.text(min_size=1, max_size=200).filter(lambda s: bool(s.strip()) and "\x00" not in s)
urls = st.builds(
    lambda scheme, host, path: f"{scheme}://{host}.example/{path}",
    st.sampled_from(["http", "https"]),
    st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
    st.from_regex(r"[a-zA-Z0-9/_.-]{0,30}", fullmatch=True),
)


def unit_floats(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(min_value=lo, max_value=hi) | st.integers(math.ceil(lo), int(hi))


@st.composite
def valid_requests(draw: st.DrawFn) -> Text2ImgRequest:
    steps = draw(st.integers(min_value=1, max_value=200))
    return Text2ImgRequest(
        prompt=draw(prompts),
        negative_prompt=draw(st.none() | st.text(max_size=50)),
        model_id=draw(st.sampled_from(["flux", "sdxl", "rev-animated-v1"]) | prompts),
        width=draw(st.integers(1, 1024)),
        height=draw(st.integers(1, 1024)),
        samples=draw(st.integers(1, 4)),
        num_inference_steps=steps,
        safety_checker=draw(st.booleans()),
        safety_checker_type=draw(st.sampled_from(SAFETY_CHECKER_TYPES)),
        seed=draw(st.none() | st.integers(0, MAX_SEED)),
        guidance_scale=draw(unit_floats(1, 20)),
        injected_noise_alpha=draw(unit_floats(0, 1)),
        sigma_threshold=draw(unit_floats(0, 1)),
        true_cfg_scale=draw(unit_floats(0, 10)),
        use_cfg_zero_star=draw(st.booleans()),
        use_zero_init=draw(st.booleans()),
        zero_steps=draw(st.integers(0, steps)),
        base64=draw(st.booleans()),
        webhook=draw(st.none() | urls),
        track_id=draw(
            st.none()
            | st.integers(min_value=-(2**40), max_value=2**40)
            | st.text(min_size=1, max_size=40)
        ),
        temp=draw(st.booleans()),
        extra=draw(st.dictionaries(extra_names, json_values, max_size=4)),
    )


# --- defaults and shape --------------------------------------------------------------------


def test_defaults_are_the_documented_defaults() -> None:
    r = Text2ImgRequest(prompt="a red fox")
    assert r.model_id == "flux"
    assert (r.width, r.height, r.samples) == (512, 512, 1)
    assert r.safety_checker is True
    assert r.safety_checker_type == "sensitive_content_text"
    assert r.seed is None
    assert r.injected_noise_alpha == 0.75
    assert r.sigma_threshold == 0.45
    assert r.true_cfg_scale == 1.0
    assert r.use_cfg_zero_star is True
    assert r.use_zero_init is False
    assert r.zero_steps == 0
    assert r.base64 is False
    assert r.temp is False
    assert r.webhook is None
    assert r.track_id is None
    assert dict(r.extra) == {}


def test_every_documented_field_is_a_field_and_the_key_is_not() -> None:
    names = {f.name for f in attrs.fields(Text2ImgRequest)}
    assert names == DOCUMENTED_FIELDS | {"extra"}
    assert "key" not in names


def test_request_is_frozen_and_extra_is_read_only() -> None:
    r = Text2ImgRequest(prompt="x", extra={"scheduler": "UniPC"})
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        r.width = 64  # type: ignore[misc]
    with pytest.raises(TypeError):
        r.extra["scheduler"] = "other"  # type: ignore[index]


def test_extra_is_copied_so_later_changes_to_the_callers_dict_do_not_leak_in() -> None:
    given_extra = {"scheduler": "UniPC"}
    r = Text2ImgRequest(prompt="x", extra=given_extra)
    given_extra["scheduler"] = "changed"
    assert r.extra["scheduler"] == "UniPC"


def test_request_is_hashable_and_equal_by_value() -> None:
    a = Text2ImgRequest(prompt="x", extra={"vae": None})
    b = Text2ImgRequest(prompt="x", extra={"vae": None})
    assert a == b
    assert hash(a) == hash(b)
    assert a != Text2ImgRequest(prompt="x", extra={"vae": "other"})


def test_replace_validates_again() -> None:
    r = Text2ImgRequest(prompt="x")
    assert r.replace(width=1024).width == 1024
    with pytest.raises(RequestValidationError, match="width"):
        r.replace(width=2048)


# --- bounds: just inside is accepted, just outside is refused --------------------------------

BELOW_1 = math.nextafter(1.0, 0.0)
ABOVE_1 = math.nextafter(1.0, 2.0)
BELOW_0 = math.nextafter(0.0, -1.0)
ABOVE_10 = math.nextafter(10.0, 11.0)
ABOVE_20 = math.nextafter(20.0, 21.0)

# field, values just inside, values just outside, text of the bound in the message
BOUNDS: list[tuple[str, list[Any], list[Any], str]] = [
    ("width", [1, 8, 1024], [0, -1, 1025, 2048], "1..1024"),
    ("height", [1, 1024], [0, 1025], "1..1024"),
    ("samples", [1, 4], [0, 5], "1..4"),
    ("num_inference_steps", [1, 20, 21, 31, 1000], [0, -1], ">= 1"),
    ("guidance_scale", [1, 1.0, 7.5, 20, 20.0], [BELOW_1, 0, 20.01, ABOVE_20], "1..20"),
    ("injected_noise_alpha", [0, 0.0, 1, 1.0], [BELOW_0, -0.01, ABOVE_1, 1.01], "0..1"),
    ("sigma_threshold", [0, 0.0, 1, 1.0], [BELOW_0, -0.01, ABOVE_1, 1.01], "0..1"),
    ("true_cfg_scale", [0, 0.0, 10, 10.0], [BELOW_0, -0.01, ABOVE_10, 10.01], "0..10"),
    ("zero_steps", [0, 20], [-1], ">= 0"),
    ("seed", [None, 0, MAX_SEED], [-1, MAX_SEED + 1], str(MAX_SEED)),
]


@pytest.mark.parametrize(
    ("field", "value"),
    [(field, v) for field, inside, _, _ in BOUNDS for v in inside],
)
def test_value_just_inside_the_bound_is_accepted(field: str, value: Any) -> None:
    r = Text2ImgRequest(prompt="x", **{field: value})
    assert getattr(r, field) == value
    assert request_to_wire(r)[field] == value


@pytest.mark.parametrize(
    ("field", "value", "bound"),
    [(field, v, bound) for field, _, outside, bound in BOUNDS for v in outside],
)
def test_value_just_outside_the_bound_names_field_value_and_bound(
    field: str, value: Any, bound: str
) -> None:
    with pytest.raises(RequestValidationError) as info:
        Text2ImgRequest(prompt="x", **{field: value})
    message = str(info.value)
    assert field in message
    assert repr(value) in message
    assert bound in message
    assert info.value.field == field
    assert info.value.value == value


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    "field", ["guidance_scale", "injected_noise_alpha", "sigma_threshold", "true_cfg_scale"]
)
def test_non_finite_numbers_are_refused(field: str, value: float) -> None:
    with pytest.raises(RequestValidationError) as info:
        Text2ImgRequest(prompt="x", **{field: value})
    assert field in str(info.value)
    assert repr(value) in str(info.value)


@pytest.mark.parametrize(
    "field",
    [
        "width",
        "height",
        "samples",
        "num_inference_steps",
        "zero_steps",
        "seed",
        "guidance_scale",
        "injected_noise_alpha",
        "sigma_threshold",
        "true_cfg_scale",
    ],
)
@pytest.mark.parametrize("value", [True, False])
def test_a_bool_is_not_accepted_for_a_number(field: str, value: bool) -> None:
    with pytest.raises(RequestValidationError) as info:
        Text2ImgRequest(prompt="x", **{field: value})
    assert field in str(info.value)
    assert repr(value) in str(info.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (field, value)
        for field in ("width", "samples", "num_inference_steps", "seed")
        for value in (512.0, "512", None)
        if not (field == "seed" and value is None)  # None is a random seed
    ],
)
def test_a_non_integer_is_not_accepted_for_an_integer_field(field: str, value: Any) -> None:
    with pytest.raises(RequestValidationError, match=field):
        Text2ImgRequest(prompt="x", **{field: value})


@pytest.mark.parametrize("field", ["safety_checker", "use_cfg_zero_star", "base64", "temp"])
@pytest.mark.parametrize("value", ["yes", 1, None])
def test_yes_no_fields_take_python_bools(field: str, value: Any) -> None:
    with pytest.raises(RequestValidationError) as info:
        Text2ImgRequest(prompt="x", **{field: value})
    assert field in str(info.value)
    assert "True or False" in str(info.value)


def test_zero_steps_may_equal_but_not_exceed_the_steps() -> None:
    assert Text2ImgRequest(prompt="x", num_inference_steps=31, zero_steps=31).zero_steps == 31
    with pytest.raises(RequestValidationError) as info:
        Text2ImgRequest(prompt="x", num_inference_steps=20, zero_steps=21)
    message = str(info.value)
    assert "zero_steps" in message
    assert "21" in message
    assert "20" in message


def test_steps_above_the_server_cap_are_accepted_and_sent_as_given() -> None:
    r = Text2ImgRequest(prompt="x", num_inference_steps=31)
    assert request_to_wire(r)["num_inference_steps"] == 31


@pytest.mark.parametrize("prompt", ["", " ", "\n\t", "a\x00b"])
def test_an_empty_or_blank_prompt_is_refused(prompt: str) -> None:
    with pytest.raises(RequestValidationError) as info:
        Text2ImgRequest(prompt=prompt)
    assert "prompt" in str(info.value)
    assert "non-empty" in str(info.value)


def test_a_prompt_over_the_limit_is_refused_without_quoting_it() -> None:
    with pytest.raises(RequestValidationError) as info:
        Text2ImgRequest(prompt="p" * 10_001)
    message = str(info.value)
    assert "10001 characters" in message
    assert "10000" in message
    assert len(message) < 200
    assert Text2ImgRequest(prompt="p" * 10_000).prompt == "p" * 10_000


def test_a_prompt_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(RequestValidationError, match="prompt"):
        Text2ImgRequest(prompt=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url", ["http://example.com/hook", "https://example.com:8443/a?b=c", "http://127.0.0.1/x"]
)
def test_an_http_or_https_webhook_is_accepted(url: str) -> None:
    assert Text2ImgRequest(prompt="x", webhook=url).webhook == url


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "example.com/hook",
        "javascript:alert(1)",
        "http://",
        "https:///path",
        "",
        "http://exa mple.com/",
        "http://[::1/",
        "file:///etc/passwd",
    ],
)
def test_a_webhook_that_is_not_an_http_url_is_refused(url: str) -> None:
    with pytest.raises(RequestValidationError) as info:
        Text2ImgRequest(prompt="x", webhook=url)
    message = str(info.value)
    assert "webhook" in message
    assert repr(url) in message
    assert "http(s)" in message


@pytest.mark.parametrize("kind", SAFETY_CHECKER_TYPES)
def test_each_safety_checker_type_is_accepted(kind: str) -> None:
    assert Text2ImgRequest(prompt="x", safety_checker_type=kind).safety_checker_type == kind  # type: ignore[arg-type]


def test_an_unknown_safety_checker_type_lists_the_allowed_ones() -> None:
    with pytest.raises(RequestValidationError) as info:
        Text2ImgRequest(prompt="x", safety_checker_type="smudge")  # type: ignore[arg-type]
    message = str(info.value)
    assert "safety_checker_type" in message
    assert "'smudge'" in message
    for kind in SAFETY_CHECKER_TYPES:
        assert kind in message


@pytest.mark.parametrize("track_id", ["", "t" * 256, True, 1.5, ["a"]])
def test_an_invalid_track_id_is_refused(track_id: Any) -> None:
    with pytest.raises(RequestValidationError, match="track_id"):
        Text2ImgRequest(prompt="x", track_id=track_id)


@pytest.mark.parametrize("track_id", [0, 123, "run-7", "t" * 255])
def test_a_valid_track_id_is_accepted(track_id: Any) -> None:
    assert Text2ImgRequest(prompt="x", track_id=track_id).track_id == track_id


@pytest.mark.parametrize("model_id", ["", "  ", None, "m" * 201])
def test_an_invalid_model_id_is_refused(model_id: Any) -> None:
    with pytest.raises(RequestValidationError, match="model_id"):
        Text2ImgRequest(prompt="x", model_id=model_id)


def test_a_negative_prompt_over_the_limit_is_refused() -> None:
    with pytest.raises(RequestValidationError, match="negative_prompt"):
        Text2ImgRequest(prompt="x", negative_prompt="n" * 10_001)
    with pytest.raises(RequestValidationError, match="negative_prompt"):
        Text2ImgRequest(prompt="x", negative_prompt=5)  # type: ignore[arg-type]


# --- extra -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DOCUMENTED_FIELDS))
def test_extra_naming_a_documented_field_is_refused(name: str) -> None:
    with pytest.raises(RequestValidationError) as info:
        Text2ImgRequest(prompt="x", extra={name: 1})
    message = str(info.value)
    assert name in message
    assert "Text2ImgRequest" in message


def test_extra_with_a_key_field_is_refused_and_names_the_client() -> None:
    with pytest.raises(RequestValidationError) as info:
        Text2ImgRequest(prompt="x", extra={"key": "sk-abc"})
    assert "'key'" in str(info.value)
    assert "client" in str(info.value)


def test_extra_named_extra_is_refused_because_it_would_not_survive_the_wire() -> None:
    with pytest.raises(RequestValidationError, match="extra"):
        Text2ImgRequest(prompt="x", extra={"extra": {"a": 1}})


@pytest.mark.parametrize(
    "extra", [{"vae": math.nan}, {"vae": object()}, {"": 1}, {1: "x"}, "scheduler=UniPC"]
)
def test_extra_must_be_a_json_object_of_named_fields(extra: Any) -> None:
    with pytest.raises(RequestValidationError, match="extra"):
        Text2ImgRequest(prompt="x", extra=extra)


def test_undocumented_fields_of_the_document_example_go_in_extra_and_are_sent() -> None:
    extra = {"enhance_prompt": "yes", "tomesd": "yes", "clip_skip": "2", "vae": None}
    body = request_to_wire(Text2ImgRequest(prompt="x", extra=extra))
    for name, value in extra.items():
        assert body[name] == value


# --- wire body -----------------------------------------------------------------------------


def test_wire_body_sends_bools_as_yes_no_and_null_seed() -> None:
    body = request_to_wire(Text2ImgRequest(prompt="x", safety_checker=False, base64=True))
    assert body["safety_checker"] == "no"
    assert body["base64"] == "yes"
    assert body["use_cfg_zero_star"] == "yes"
    assert body["use_zero_init"] == "no"
    assert body["temp"] == "no"
    assert body["seed"] is None
    assert body["webhook"] is None
    assert body["track_id"] is None
    assert "negative_prompt" not in body
    assert "key" not in body
    assert "extra" not in body


def test_wire_body_of_the_document_example_parses_with_string_numbers() -> None:
    body = {
        "model_id": "flux",
        "prompt": "ultra realistic close up portrait",
        "width": "512",
        "height": "512",
        "samples": "1",
        "num_inference_steps": "31",
        "safety_checker": "no",
        "enhance_prompt": "yes",
        "seed": None,
        "guidance_scale": 7.5,
        "tomesd": "yes",
        "clip_skip": "2",
        "vae": None,
        "webhook": None,
        "track_id": None,
    }
    r = request_from_wire(body)
    assert (r.width, r.height, r.samples, r.num_inference_steps) == (512, 512, 1, 31)
    assert r.safety_checker is False
    assert r.seed is None
    assert dict(r.extra) == {
        "enhance_prompt": "yes",
        "tomesd": "yes",
        "clip_skip": "2",
        "vae": None,
    }
    assert request_to_wire(r)["num_inference_steps"] == 31


def test_request_from_wire_refuses_a_key_without_quoting_it() -> None:
    with pytest.raises(RequestValidationError) as info:
        request_from_wire({"prompt": "x", "key": "sk-secret-in-file"})
    assert "sk-secret-in-file" not in str(info.value)
    assert "key" in str(info.value)


def test_request_from_wire_reports_an_unconvertible_value_with_its_range() -> None:
    with pytest.raises(RequestValidationError) as info:
        request_from_wire({"prompt": "x", "width": "wide"})
    assert "width" in str(info.value)
    assert "'wide'" in str(info.value)
    assert "1..1024" in str(info.value)


def test_request_from_wire_refuses_a_non_object() -> None:
    with pytest.raises(RequestValidationError):
        request_from_wire(["prompt", "x"])  # type: ignore[arg-type]


def test_request_from_wire_accepts_the_nested_extra_of_the_json_form() -> None:
    r = request_from_wire({"prompt": "x", "extra": {"scheduler": "UniPC"}, "vae": None})
    assert dict(r.extra) == {"scheduler": "UniPC", "vae": None}


@settings(max_examples=300)
@given(valid_requests())
def test_any_valid_request_survives_the_wire_round_trip(request: Text2ImgRequest) -> None:
    body = request_to_wire(request)
    text = json.dumps(body, allow_nan=False)
    back = request_from_wire(json.loads(text))
    assert back == request
    assert fingerprint(back) == fingerprint(request)


@given(valid_requests())
def test_the_wire_body_never_holds_a_key_and_always_yes_no_bools(request: Text2ImgRequest) -> None:
    body = request_to_wire(request)
    assert "key" not in body
    for name in ("safety_checker", "use_cfg_zero_star", "use_zero_init", "base64", "temp"):
        assert body[name] in ("yes", "no")
        assert body[name] == ("yes" if getattr(request, name) else "no")
    assert "seed" in body


@given(valid_requests(), valid_requests())
def test_fingerprint_identifies_the_wire_body(a: Text2ImgRequest, b: Text2ImgRequest) -> None:
    def canonical(r: Text2ImgRequest) -> str:
        return json.dumps(request_to_wire(r), sort_keys=True)

    assert (fingerprint(a) == fingerprint(b)) == (canonical(a) == canonical(b))


def test_an_int_for_a_float_field_is_stored_as_a_float_so_fingerprints_agree() -> None:
    a = Text2ImgRequest(prompt="x", guidance_scale=7, true_cfg_scale=0)
    b = Text2ImgRequest(prompt="x", guidance_scale=7.0, true_cfg_scale=0.0)
    assert type(a.guidance_scale) is float
    assert type(a.true_cfg_scale) is float
    assert fingerprint(a) == fingerprint(b)


def test_fingerprint_is_a_sha256_hex_digest() -> None:
    fp = fingerprint(Text2ImgRequest(prompt="x"))
    assert len(fp) == 64
    int(fp, 16)


def test_fingerprints_stay_those_of_earlier_manifests() -> None:
    # A rerun finds its items in a manifest by fingerprint: the canonical form (sorted keys,
    # no spaces) may never change, or old manifests would be resubmitted in full.
    request = Text2ImgRequest(prompt="a red fox", seed=7, extra={"scheduler": "DPM"})
    canonical = json.dumps(request_to_wire(request), sort_keys=True, separators=(",", ":"))
    assert fingerprint(request) == hashlib.sha256(canonical.encode()).hexdigest()
    assert fingerprint(request) == (
        "284c39b6bc8cf947f6cb66c9d60c7dc1a4b688603a91df9e513820cd4cc081bd"
    )


# --- the command line check of the issue -----------------------------------------------------


def test_python_c_with_width_2048_fails_naming_width_2048_and_1024() -> None:
    code = "import modelslab_async as m; m.Text2ImgRequest(prompt='x', width=2048)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "RequestValidationError" in last
    assert "width" in last
    assert "2048" in last
    assert "1024" in last


def test_request_validation_error_is_a_value_error_and_a_modelslab_error() -> None:
    with pytest.raises(ValueError, match="width") as info:
        m.Text2ImgRequest(prompt="x", width=2048)
    assert isinstance(info.value, m.ModelsLabError)
    assert isinstance(info.value, m.RequestValidationError)
    assert info.value.allowed == "an integer in 1..1024"


def test_a_huge_int_for_a_float_field_is_refused_not_overflowed() -> None:
    with pytest.raises(RequestValidationError, match="guidance_scale"):
        Text2ImgRequest(prompt="x", guidance_scale=10**400)


def test_request_from_wire_keeps_a_digit_string_track_id_as_a_string() -> None:
    assert request_from_wire({"prompt": "x", "track_id": "123"}).track_id == "123"
    assert request_from_wire({"prompt": "x", "track_id": 123}).track_id == 123


@given(valid_requests())
def test_any_valid_request_survives_its_json_form(request: Text2ImgRequest) -> None:
    data = json.loads(json.dumps(request_to_json(request), allow_nan=False))
    assert request_from_wire(data) == request


def test_an_integer_too_long_to_print_is_still_a_request_validation_error() -> None:
    with pytest.raises(RequestValidationError) as info:
        Text2ImgRequest(prompt="x", width=10**5000)
    assert "width" in str(info.value)
    assert "bits" in str(info.value)
    assert "1..1024" in str(info.value)


def test_request_from_wire_without_a_prompt_names_the_prompt() -> None:
    with pytest.raises(RequestValidationError, match="prompt is required"):
        request_from_wire({"width": 512})


# --- the field table ---------------------------------------------------------------------------


def test_the_table_holds_every_field_of_the_request_with_its_type_and_default() -> None:
    # (the class's __module__ is the package: its annotations resolve in _types)
    resolved = attrs.resolve_types(Text2ImgRequest, globalns=vars(_types))
    fields = attrs.fields_dict(resolved)
    assert [f.name for f in REQUEST_FIELDS] == [name for name in fields if name != "extra"]
    for spec in REQUEST_FIELDS:
        assert fields[spec.name].type == spec.type, spec.name
        assert fields[spec.name].default is spec.default, spec.name
        assert spec.help.endswith("."), spec.name


def test_only_the_prompt_is_required() -> None:
    assert [f.name for f in REQUEST_FIELDS if f.default is REQUIRED] == ["prompt"]


@pytest.mark.parametrize("spec", REQUEST_FIELDS, ids=lambda f: f.name)
def test_each_default_passes_its_own_check(spec: Any) -> None:
    if spec.default is not REQUIRED:
        spec.validate(None, None, spec.default)


@pytest.mark.parametrize(
    "spec",
    [f for f in REQUEST_FIELDS if f.high is not None or f.low is not None],
    ids=lambda f: f.name,
)
def test_the_table_bounds_are_the_ones_the_request_enforces(spec: Any) -> None:
    low = spec.low if spec.type is not float else float(spec.low)
    Text2ImgRequest(prompt="x", **{spec.name: low})
    below = low - 1 if spec.type is not float else math.nextafter(low, -math.inf)
    with pytest.raises(RequestValidationError, match=spec.name):
        Text2ImgRequest(prompt="x", **{spec.name: below})
    if spec.high is not None:
        Text2ImgRequest(prompt="x", **{spec.name: spec.high})
        above = spec.high + 1 if spec.type is not float else math.nextafter(spec.high, math.inf)
        with pytest.raises(RequestValidationError, match=spec.bounds.replace(".", r"\.")):
            Text2ImgRequest(prompt="x", **{spec.name: above})


def test_the_readme_field_list_is_the_table() -> None:
    readme = (ROOT / "README.md").read_text()
    begin, end = "<!-- request-fields: begin -->\n", "<!-- request-fields: end -->"
    assert begin in readme
    assert end in readme
    listed = readme.split(begin, 1)[1].split(end, 1)[0]
    assert listed == request_fields_markdown(), (
        "README.md's field list differs from REQUEST_FIELDS; paste this between the markers:\n"
        + request_fields_markdown()
    )


def test_text_fields_show_their_length_not_their_text_when_too_long() -> None:
    with pytest.raises(RequestValidationError) as info:
        Text2ImgRequest(prompt="x", negative_prompt="secret " * 2000)
    assert "secret" not in str(info.value)
    assert "14000 characters" in str(info.value)


def _nested(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"a": value}
    return value


def test_an_extra_value_may_nest_32_levels_deep() -> None:
    assert Text2ImgRequest(prompt="x", extra={"lora": _nested(32)}).extra["lora"] == _nested(32)


@pytest.mark.parametrize("depth", [33, 5000, 10**6])
def test_a_deeper_extra_value_is_a_validation_error(depth: int) -> None:
    with pytest.raises(RequestValidationError, match=r"extra\['lora'\].*at most 32 levels"):
        Text2ImgRequest(prompt="x", extra={"lora": _nested(depth)})


def test_an_extra_value_that_holds_itself_is_a_validation_error() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(RequestValidationError, match="extra"):
        Text2ImgRequest(prompt="x", extra={"lora": loop})


def test_replace_and_evolve_run_every_check_again() -> None:
    request = Text2ImgRequest(prompt="a red fox")
    with pytest.raises(RequestValidationError, match="width"):
        attrs.evolve(request, width=4096)
    with pytest.raises(RequestValidationError, match="track_id"):
        request.replace(track_id="")
