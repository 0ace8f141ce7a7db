"""The one converter: every real answer shape -> Job / Generation / the right error."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelslab_async import (
    APIError,
    AuthenticationError,
    BadRequestError,
    Generation,
    GenerationFailed,
    Job,
    Meta,
    ModelsLabError,
    RateLimitError,
    ResponseFormatError,
    ServerError,
    Text2ImgRequest,
    _scalars,
)
from modelslab_async._convert import (
    _META_FIELDS,
    _structure_meta,
    decode_json,
    parse_answer,
    structure_answer,
)
from modelslab_async._error_map import api_message, error_from_answer
from tests.conftest import fixture_names, load_fixture


def parse_fixture(name: str, **kw: Any) -> Job | Generation:
    return parse_answer(json.dumps(load_fixture(name)).encode(), **kw)


def outcome_of(data: Any, **kw: Any) -> Job | Generation | ModelsLabError:
    try:
        return parse_answer(json.dumps(data).encode(), **kw)
    except ModelsLabError as exc:
        return exc


# --- each fixture maps to the right class ---------------------------------------------------

EXPECTED_KIND: dict[str, type[object]] = {
    "fetch-failed.json": GenerationFailed,
    "fetch-processing-inferred.json": Job,
    "fetch-success-full.json": Generation,
    "fetch-success.json": Generation,
    "text2img-error-invalid-key.json": AuthenticationError,
    "text2img-error-model-not-found.json": BadRequestError,
    "text2img-error-queue-limit-429.json": RateLimitError,
    "text2img-error-rate-limit.json": RateLimitError,
    "text2img-error-seed-doc.json": APIError,
    "text2img-error-validation.json": BadRequestError,
    "text2img-processing-base64-inferred.json": Job,
    "text2img-processing-recorded-message-spelling.json": Job,
    "text2img-processing-recorded-output-string.json": Job,
    "text2img-processing-recorded-v4-dreambooth.json": Job,
    "text2img-processing.json": Job,
    "text2img-success-base64-inferred.json": Generation,
    "text2img-success-recorded-realtime.json": Generation,
    "text2img-success-with-nsfw-flag.json": Generation,
    "text2img-success.json": Generation,
    "webhook-payload-failed.json": GenerationFailed,
    "webhook-payload.json": Generation,
}
PROCESSING = sorted(n for n, k in EXPECTED_KIND.items() if k is Job)
SUCCESS = sorted(n for n, k in EXPECTED_KIND.items() if k is Generation)


def test_every_fixture_has_an_expected_kind() -> None:
    assert sorted(EXPECTED_KIND) == fixture_names()


@pytest.mark.parametrize("name", sorted(EXPECTED_KIND))
def test_each_fixture_maps_to_its_class(name: str) -> None:
    result = outcome_of(load_fixture(name))
    assert type(result) is EXPECTED_KIND[name]


def test_invalid_key_is_an_authentication_error_with_the_api_message() -> None:
    with pytest.raises(AuthenticationError) as info:
        parse_fixture("text2img-error-invalid-key.json")
    assert info.value.api_message == "Invalid Api Key"
    assert info.value.status_code == 200
    assert "Invalid Api Key" in str(info.value)


def test_spam_filter_rate_limit_has_no_retry_after() -> None:
    with pytest.raises(RateLimitError) as info:
        parse_fixture("text2img-error-rate-limit.json")
    assert info.value.retry_after is None
    assert info.value.api_message == "Rate limit exceeded"


def test_queue_limit_rate_limit_carries_retry_after_30() -> None:
    with pytest.raises(RateLimitError) as info:
        parse_fixture("text2img-error-queue-limit-429.json", status_code=429)
    assert info.value.retry_after == 30.0
    assert info.value.status_code == 429
    assert "retry after 30s" in str(info.value)


def test_body_retry_after_wins_over_the_header() -> None:
    with pytest.raises(RateLimitError) as info:
        parse_fixture("text2img-error-queue-limit-429.json", retry_after=5.0)
    assert info.value.retry_after == 30.0


def test_header_retry_after_is_used_when_the_body_has_none() -> None:
    with pytest.raises(RateLimitError) as info:
        parse_fixture("text2img-error-rate-limit.json", retry_after=5.0)
    assert info.value.retry_after == 5.0


def test_validation_error_object_message_is_flattened_into_a_bad_request() -> None:
    with pytest.raises(BadRequestError) as info:
        parse_fixture("text2img-error-validation.json")
    assert info.value.api_message == "prompt: The prompt field is required."
    assert "\n" not in str(info.value)


def test_model_not_found_is_a_bad_request() -> None:
    with pytest.raises(BadRequestError) as info:
        parse_fixture("text2img-error-model-not-found.json")
    assert info.value.api_message == "Model id not found"


def test_generic_error_with_misspelled_messege_is_an_api_error() -> None:
    with pytest.raises(APIError) as info:
        parse_fixture("text2img-error-seed-doc.json")
    assert type(info.value) is APIError
    assert info.value.api_message == "Error message"


def test_failed_try_again_is_a_transient_generation_failure() -> None:
    with pytest.raises(GenerationFailed) as info:
        parse_fixture("fetch-failed.json")
    assert info.value.transient is True
    assert info.value.job_id is None
    assert info.value.api_message == "Failed, Try Again"


def test_failed_fetch_keeps_the_job_id_the_caller_asked_about() -> None:
    with pytest.raises(GenerationFailed) as info:
        parse_fixture("fetch-failed.json", job_id=777)
    assert info.value.job_id == 777
    assert "777" in str(info.value)


def test_failed_webhook_payload_is_a_permanent_failure_with_its_string_id() -> None:
    with pytest.raises(GenerationFailed) as info:
        parse_fixture("webhook-payload-failed.json")
    assert info.value.transient is False
    assert info.value.job_id == "abc123-def456"


@pytest.mark.parametrize("name", PROCESSING)
def test_processing_fixture_is_a_job_with_int_id_and_float_eta(name: str) -> None:
    data = load_fixture(name)
    job = parse_fixture(name)
    assert isinstance(job, Job)
    assert type(job.id) is int
    assert job.id == int(data["id"])
    assert type(job.eta) is float
    assert job.eta == float(data["eta"])
    assert job.fetch_url == data["fetch_result"]
    assert job.future_links == tuple(data.get("future_links", []))
    assert job.proxy_links == tuple(data.get("proxy_links", []))


@pytest.mark.parametrize("name", PROCESSING)
def test_processing_message_is_read_from_either_spelling(name: str) -> None:
    data = load_fixture(name)
    job = parse_fixture(name)
    assert isinstance(job, Job)
    assert job.message == data.get("message", data.get("messege"))
    assert job.message is not None


def test_processing_keeps_the_eta_float_as_sent() -> None:
    job = parse_fixture("text2img-processing-recorded-v4-dreambooth.json")
    assert isinstance(job, Job)
    assert job.eta == 20.9379869184


def test_processing_with_output_string_has_no_output_and_its_future_link() -> None:
    job = parse_fixture("text2img-processing-recorded-output-string.json")
    assert isinstance(job, Job)
    assert len(job.future_links) == 1
    assert job.meta is not None
    assert (job.meta.width, job.meta.height) == (576, 320)
    assert job.meta.extra["num_frames"] == 24


def test_processing_answer_carries_the_request_and_a_submission_time() -> None:
    request = Text2ImgRequest(prompt="x")
    job = parse_fixture("text2img-processing.json", request=request)
    assert isinstance(job, Job)
    assert job.request is request
    assert job.submitted_at > 0


def test_processing_answer_without_job_meta_leaves_only_the_meta_out() -> None:
    full = parse_fixture("text2img-processing.json")
    lean = parse_fixture("text2img-processing.json", job_meta=False)
    assert isinstance(full, Job)
    assert isinstance(lean, Job)
    assert full.meta is not None
    assert lean.meta is None
    assert attrs.evolve(full, meta=None, submitted_at=lean.submitted_at) == lean
    # A success answer keeps its meta either way: it is what the caller gets.
    done = parse_fixture("text2img-success.json", job_meta=False)
    assert isinstance(done, Generation)
    assert done.meta is not None


def test_base64_processing_job_knows_it_is_base64() -> None:
    job = parse_fixture("text2img-processing-base64-inferred.json")
    assert isinstance(job, Job)
    assert job.is_base64
    assert job.meta is not None
    assert job.meta.base64 is True
    assert not parse_fixture("text2img-processing.json").is_base64


@pytest.mark.parametrize("name", SUCCESS)
def test_success_fixture_is_a_generation_with_its_output_urls(name: str) -> None:
    data = load_fixture(name)
    gen = parse_fixture(name)
    assert isinstance(gen, Generation)
    assert gen.status == "success"
    assert gen.output == tuple(data["output"])
    if "generationTime" in data:
        assert type(gen.generation_time) is float
        assert gen.generation_time == data["generationTime"]
    else:
        assert gen.generation_time is None


def test_success_meta_keeps_unknown_fields_in_extra() -> None:
    gen = parse_fixture("text2img-success.json")
    assert isinstance(gen, Generation)
    meta = gen.meta
    assert meta is not None
    assert meta.width == 1024
    assert meta.height == 1024
    assert meta.seed == 2611448049
    assert meta.num_inference_steps == 12
    assert meta.base64 is False
    assert meta.safety_checker is False
    assert meta.extra["enhance_prompt"] == "yes"
    assert meta.extra["id"] == "134693666"
    assert meta.extra["opacity"] == 0.8
    assert meta.extra["clip_skip"] is None
    assert gen.seed == 2611448049


def test_old_meta_w_h_and_steps_are_read_into_width_height_and_steps() -> None:
    gen = parse_fixture("fetch-success-full.json")
    assert isinstance(gen, Generation)
    meta = gen.meta
    assert meta is not None
    assert (meta.width, meta.height, meta.num_inference_steps) == (512, 512, 20)
    assert meta.safety_checker is False  # "none"
    assert meta.extra["model"] == "runwayml/stable-diffusion-v1-5"
    assert meta.extra["enable_attention_slicing"] == "true"
    assert "W" not in meta.extra
    assert "H" not in meta.extra


def test_success_with_null_id_takes_the_id_the_caller_fetched() -> None:
    gen = parse_fixture("text2img-success-with-nsfw-flag.json")
    assert isinstance(gen, Generation)
    assert gen.id is None
    assert gen.nsfw_content_detected is False
    assert gen.proxy_links == tuple(
        load_fixture("text2img-success-with-nsfw-flag.json")["proxy_links"]
    )
    fetched = parse_fixture("text2img-success-with-nsfw-flag.json", job_id=42)
    assert fetched.id == 42


def test_base64_success_is_recognised_from_its_urls() -> None:
    gen = parse_fixture("text2img-success-base64-inferred.json")
    assert isinstance(gen, Generation)
    assert gen.is_base64
    assert gen.output[0].endswith(".base64")
    assert not parse_fixture("text2img-success.json").is_base64


def test_webhook_payload_keeps_a_non_numeric_string_id_and_track_id() -> None:
    gen = parse_fixture("webhook-payload.json")
    assert isinstance(gen, Generation)
    assert gen.id == "abc123-def456"
    assert gen.track_id == "video_001"


def test_generation_seed_falls_back_to_the_request() -> None:
    request = Text2ImgRequest(prompt="x", seed=5)
    gen = parse_fixture("fetch-success.json", request=request)
    assert isinstance(gen, Generation)
    assert gen.meta is None
    assert gen.seed == 5
    assert gen.request is request


# --- quirks: hypothesis perturbations of every fixture -------------------------------------

KNOWN_TOP = {
    "status",
    "id",
    "eta",
    "output",
    "message",
    "messege",
    "error",
    "meta",
    "fetch_result",
    "future_links",
    "proxy_links",
    "generationTime",
    "retry_after",
    "track_id",
    "nsfw_content_detected",
}
KNOWN_META = {a.name for a in Meta.__attrs_attrs__} | {"W", "H", "steps"}
NUMERIC_META = {
    "width",
    "height",
    "n_samples",
    "num_inference_steps",
    "guidance_scale",
    "seed",
    "W",
    "H",
    "steps",
}
BOOL_META = {"base64", "temp", "safety_checker"}

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)
unknown_top_names = st.sampled_from(["tip", "tips", "tip_1", "webhook_status", "warning"]) | (
    st.text(min_size=1, max_size=12).filter(lambda s: s not in KNOWN_TOP)
)
unknown_meta_names = st.text(min_size=1, max_size=12).filter(lambda s: s not in KNOWN_META)
job_ids = st.integers(min_value=0, max_value=2**53)


@st.composite
def perturbed_fixture(draw: st.DrawFn) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A fixture with some quirks applied, and what the parse must then show."""
    name = draw(st.sampled_from(fixture_names()))
    data = copy.deepcopy(load_fixture(name))
    expect: dict[str, Any] = {}

    if draw(st.booleans()):  # messege <-> message
        if "messege" in data:
            data["message"] = data.pop("messege")
        elif "message" in data:
            data["messege"] = data.pop("message")

    if draw(st.booleans()):  # ids as int, digit string, other string, "" or null
        number = draw(job_ids)
        form = draw(st.sampled_from(["int", "digits", "text", "empty", "null"]))
        data["id"] = {
            "int": number,
            "digits": str(number),
            "text": f"job-{number}",
            "empty": "",
            "null": None,
        }[form]
        expect["id"] = {"int": number, "digits": number, "text": f"job-{number}"}.get(form)

    if "eta" in data and draw(st.booleans()):  # eta as int, float or string
        eta = draw(
            st.integers(0, 10_000)
            | st.floats(0, 10_000, allow_nan=False)
            | st.integers(0, 10_000).map(str)
            | st.floats(0, 10_000, allow_nan=False).map(repr)
        )
        data["eta"] = eta
        expect["eta"] = float(eta)

    if data.get("output") == [] and draw(st.booleans()):  # "" instead of []
        data["output"] = draw(st.sampled_from(["", None]))

    meta = data.get("meta")
    if isinstance(meta, dict):
        expect["meta_values"] = {}
        for key, value in list(meta.items()):
            if key in NUMERIC_META and isinstance(value, int | float) and draw(st.booleans()):
                meta[key] = str(value)  # numbers as strings
            if key in BOOL_META and value in ("yes", "no", True, False) and draw(st.booleans()):
                truth = value in ("yes", True)
                meta[key] = draw(st.sampled_from(["yes", True] if truth else ["no", False]))
    if data.get("status") in ("success", "processing") and draw(st.booleans()):
        key = draw(unknown_meta_names)
        value = draw(json_values)
        if not isinstance(meta, dict):
            meta = data["meta"] = {}
        if key not in meta:
            meta[key] = value
            expect["meta_extra"] = (key, value)

    for key in draw(st.lists(unknown_top_names, max_size=3, unique=True)):
        if key not in data:
            data[key] = draw(json_values)  # tip / tips / webhook_status / anything

    return name, data, expect


def _id_in_fetch_url(url: str) -> int:
    found = re.search(r"/(\d+)/*$", url)
    assert found is not None
    return int(found.group(1))


@settings(max_examples=400)
@given(perturbed_fixture())
def test_every_fixture_with_quirks_parses_to_the_same_kind(
    case: tuple[str, dict[str, Any], dict[str, Any]],
) -> None:
    name, data, expect = case
    original = outcome_of(load_fixture(name))
    result = outcome_of(data)
    assert type(result) is type(original), (name, result)

    if isinstance(result, Job):
        assert isinstance(original, Job)
        if "id" in expect and expect["id"] is not None:
            assert result.id == expect["id"]
        elif "id" in expect:  # "" or null: the id in the fetch URL
            assert result.id == _id_in_fetch_url(data["fetch_result"])
        else:
            assert result.id == original.id
        assert type(result.eta) is float
        assert result.eta == expect.get("eta", original.eta)
        assert result.future_links == original.future_links
        assert result.message == original.message
    elif isinstance(result, Generation):
        assert isinstance(original, Generation)
        if "id" in expect:
            assert result.id == expect["id"]
        else:
            assert result.id == original.id
        assert result.output == original.output
        assert result.generation_time == original.generation_time
    elif isinstance(result, RateLimitError):
        assert isinstance(original, RateLimitError)
        assert result.retry_after == original.retry_after
        assert result.api_message == original.api_message
    elif isinstance(result, APIError):
        assert isinstance(original, APIError)
        assert result.api_message == original.api_message
    elif isinstance(result, GenerationFailed):
        assert isinstance(original, GenerationFailed)
        assert result.transient == original.transient
        if "id" in expect:
            assert result.job_id == expect["id"]

    if isinstance(result, Job | Generation) and isinstance(original, Job | Generation):
        if original.meta is not None:
            assert result.meta is not None
            for field in ("width", "height", "seed", "guidance_scale", "num_inference_steps"):
                assert getattr(result.meta, field) == getattr(original.meta, field)
            for field in ("base64", "temp", "safety_checker"):
                assert getattr(result.meta, field) == getattr(original.meta, field)
            for key, value in original.meta.extra.items():
                assert result.meta.extra[key] == value
        if "meta_extra" in expect:
            key, value = expect["meta_extra"]
            assert result.meta is not None
            assert result.meta.extra[key] == value


# --- answers that are not what the API sends -> ResponseFormatError with an excerpt ----------


@pytest.mark.parametrize("status", ["queued", "", None, "SUCCESSFUL", 1])
def test_unknown_status_is_a_response_format_error(status: Any) -> None:
    with pytest.raises(ResponseFormatError) as info:
        parse_answer(json.dumps({"status": status, "id": 1}).encode())
    assert "unknown status" in str(info.value)
    assert info.value.path == "$.status"
    assert info.value.body is not None
    assert '"id": 1' in info.value.body


def test_missing_status_is_a_response_format_error() -> None:
    with pytest.raises(ResponseFormatError, match="unknown status"):
        parse_answer(b'{"id": 5, "output": []}')


@pytest.mark.parametrize(
    "body",
    [
        b"<!DOCTYPE html><html><head><title>404 Not Found</title></head></html>",
        b"  \n<html><body>Bad Gateway</body></html>",
        b"<!doctype html>" + b"<p>filler</p>" * 2000,
    ],
)
def test_an_html_page_is_a_response_format_error_with_a_short_excerpt(body: bytes) -> None:
    with pytest.raises(ResponseFormatError) as info:
        parse_answer(body, status_code=200, url="https://modelslab.com/api/v6/images/text2img")
    exc = info.value
    assert "HTML" in str(exc)
    assert exc.status_code == 200
    assert exc.url == "https://modelslab.com/api/v6/images/text2img"
    assert exc.body is not None
    assert len(exc.body) <= 200
    assert "html" in exc.body.lower()
    assert "\n" not in str(exc)
    assert len(str(exc)) < 300


@pytest.mark.parametrize(
    "body",
    [
        b'{"status": "success", "id": 1,',
        b"not json at all",
        b"",
        b'{"status": "success"} trailing',
        b"\xff\xfe\x00garbage",
        b"NaNx",
    ],
)
def test_malformed_json_is_a_response_format_error_with_a_short_excerpt(body: bytes) -> None:
    with pytest.raises(ResponseFormatError) as info:
        parse_answer(body)
    exc = info.value
    assert "malformed JSON" in str(exc)
    assert exc.body is not None
    assert len(exc.body) <= 200
    assert "\n" not in str(exc)


def test_a_long_malformed_body_is_cut_to_an_excerpt() -> None:
    body = b'{"status": "success", "output": ["' + b"x" * 5000
    with pytest.raises(ResponseFormatError) as info:
        parse_answer(body)
    assert info.value.body is not None
    assert len(info.value.body) <= 200
    assert info.value.body.startswith('{"status": "success"')
    assert len(str(info.value)) < 300


@pytest.mark.parametrize("data", [[], [1, 2], "success", 3, None])
def test_json_that_is_not_an_object_is_a_response_format_error(data: Any) -> None:
    with pytest.raises(ResponseFormatError, match="expected a JSON object"):
        parse_answer(json.dumps(data).encode())


def test_processing_without_any_id_is_a_response_format_error() -> None:
    data = {"status": "processing", "id": None, "eta": 3, "output": []}
    with pytest.raises(ResponseFormatError) as info:
        structure_answer(data)
    assert info.value.path == "$.id"


@pytest.mark.parametrize("empty", [None, ""])
def test_processing_without_id_uses_the_fetch_url_id(empty: Any) -> None:
    data = load_fixture("fetch-processing-inferred.json")
    data["id"] = empty
    job = structure_answer(data)
    assert isinstance(job, Job)
    assert job.id == 13441520


def test_processing_without_id_prefers_the_id_the_caller_fetched() -> None:
    data = load_fixture("text2img-processing.json")
    data["id"] = ""
    job = structure_answer(data, job_id=99)
    assert isinstance(job, Job)
    assert job.id == 99


@pytest.mark.parametrize(
    ("patch", "where"),
    [
        ({"output": 5}, "output"),
        ({"generationTime": "fast"}, "generationTime"),
        ({"meta": [1, 2]}, "meta"),
        ({"id": {"nested": 1}}, "id"),
    ],
)
def test_a_success_of_the_wrong_shape_names_the_offending_path(
    patch: dict[str, Any], where: str
) -> None:
    data = {**load_fixture("text2img-success.json"), **patch}
    with pytest.raises(ResponseFormatError) as info:
        structure_answer(data)
    assert info.value.path is not None
    assert where in info.value.path
    assert where in str(info.value)


def test_a_processing_answer_with_a_non_numeric_eta_is_a_response_format_error() -> None:
    data = {**load_fixture("text2img-processing.json"), "eta": "soon"}
    with pytest.raises(ResponseFormatError, match="eta"):
        structure_answer(data)


def test_an_unexpected_meta_value_is_kept_raw_in_extra_instead_of_failing() -> None:
    data = load_fixture("text2img-success.json")
    data["meta"]["width"] = "wide"
    data["meta"]["base64"] = "perhaps"
    gen = structure_answer(data)
    assert isinstance(gen, Generation)
    assert gen.meta is not None
    assert gen.meta.width is None
    assert gen.meta.extra["width"] == "wide"
    assert gen.meta.base64 is None  # an unreadable yes/no is unknown, not an error


def test_empty_meta_list_from_php_is_no_meta() -> None:
    data = {**load_fixture("fetch-success.json"), "meta": []}
    gen = structure_answer(data)
    assert isinstance(gen, Generation)
    assert gen.meta is None


def test_output_links_drop_empty_and_non_string_entries_and_accept_one_string() -> None:
    data = {**load_fixture("fetch-success.json"), "output": ["https://a/1.png", "", None, 3]}
    gen = structure_answer(data)
    assert isinstance(gen, Generation)
    assert gen.output == ("https://a/1.png",)
    one = structure_answer({**data, "output": "https://a/2.png"})
    assert isinstance(one, Generation)
    assert one.output == ("https://a/2.png",)


def test_status_is_matched_case_insensitively() -> None:
    gen = structure_answer({**load_fixture("fetch-success.json"), "status": " Success "})
    assert isinstance(gen, Generation)


# --- HTTP statuses -> classes ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, AuthenticationError),
        (403, AuthenticationError),
        (429, RateLimitError),
        (500, ServerError),
        (502, ServerError),
        (503, ServerError),
        (504, ServerError),
        (400, BadRequestError),
        (404, BadRequestError),
        (422, BadRequestError),
    ],
)
def test_http_error_status_without_a_json_body_maps_to_its_class(
    status: int, kind: type[APIError]
) -> None:
    exc = error_from_answer(None, status_code=status, body=b"<html>oops</html>", url="http://h/x")
    assert type(exc) is kind
    assert isinstance(exc, APIError)
    assert exc.status_code == status
    assert exc.url == "http://h/x"
    assert f"HTTP {status}" in str(exc)


def test_http_429_carries_the_header_retry_after() -> None:
    exc = error_from_answer(None, status_code=429, retry_after=7.0)
    assert isinstance(exc, RateLimitError)
    assert exc.retry_after == 7.0


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (401, {"message": "Unauthenticated."}, AuthenticationError),
        (403, {"message": "Forbidden"}, AuthenticationError),
        (429, {"message": "Too Many Attempts."}, RateLimitError),
        (500, {"message": "Server Error"}, ServerError),
        (503, {"message": "Service Unavailable"}, ServerError),
        (
            422,
            {"message": {"width": ["The width must not be greater than 1024."]}},
            BadRequestError,
        ),
    ],
)
def test_http_error_status_with_a_json_body_without_status_maps_to_its_class(
    status: int, body: dict[str, Any], kind: type[APIError]
) -> None:
    with pytest.raises(kind) as info:
        parse_answer(json.dumps(body).encode(), status_code=status)
    assert info.value.status_code == status


def test_http_error_status_with_an_error_body_maps_to_its_class() -> None:
    body = json.dumps(load_fixture("text2img-error-queue-limit-429.json")).encode()
    with pytest.raises(RateLimitError) as info:
        parse_answer(body, status_code=429)
    assert info.value.retry_after == 30.0


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("Invalid Api Key", AuthenticationError),
        ("invalid key provided", AuthenticationError),
        ("Unauthorized", AuthenticationError),
        ("Too many requests", RateLimitError),
        ("queue full", RateLimitError),
        ("Model id not found", BadRequestError),
        ("The prompt field is required.", BadRequestError),
        ("width must be less than 1024", BadRequestError),
        ("Failed, Try Again", GenerationFailed),
        ("Something odd", APIError),
    ],
)
def test_api_messages_map_to_their_class(message: str, kind: type[ModelsLabError]) -> None:
    exc = error_from_answer({"status": "error", "messege": message}, status_code=200)
    assert type(exc) is kind


def test_http_5xx_with_an_error_body_is_a_server_error() -> None:
    with pytest.raises(ServerError) as info:
        parse_answer(b'{"status": "error", "message": "boom"}', status_code=500)
    assert info.value.api_message == "boom"


def test_a_negative_or_non_numeric_retry_after_in_the_body_is_ignored() -> None:
    for value in (-5, "soon", float("inf")):
        data = {"status": "error", "message": "Rate limit exceeded", "retry_after": value}
        exc = error_from_answer(data, status_code=200, retry_after=2.0)
        assert isinstance(exc, RateLimitError)
        assert exc.retry_after == 2.0


def test_a_string_retry_after_in_the_body_is_read() -> None:
    data = {"status": "error", "message": "Rate limit exceeded", "retry_after": "12"}
    exc = error_from_answer(data, status_code=200)
    assert isinstance(exc, RateLimitError)
    assert exc.retry_after == 12.0


@pytest.mark.parametrize(
    ("data", "text"),
    [
        ({"message": "plain"}, "plain"),
        ({"messege": "misspelt"}, "misspelt"),
        ({"message": ["a", "b"]}, "a; b"),
        ({"message": {"w": ["too big", "odd"], "h": "bad"}}, "w: too big; odd | h: bad"),
        ({"error": "from error"}, "from error"),
        ({}, None),
    ],
)
def test_api_message_reads_every_shape(data: dict[str, Any], text: str | None) -> None:
    assert api_message(data) == text


def test_decode_json_returns_the_document() -> None:
    assert decode_json(b' {"a": [1, "2"]}') == {"a": [1, "2"]}


# --- scalar hooks: every loose form the API sends, and what is refused ------------------------


@pytest.mark.parametrize(
    ("hook", "value", "expected"),
    [
        ("to_bool", 1, True),
        ("to_bool", 0.0, False),
        ("to_bool", " YES ", True),
        ("to_bool", "off", False),
        ("to_opt_bool", None, None),
        ("to_opt_bool", "maybe", None),
        ("to_opt_bool", "true", True),
        ("to_int", 7.0, 7),
        ("to_int", " 512 ", 512),
        ("to_int", "7.0", 7),
        ("to_opt_int", "", None),
        ("to_opt_int", None, None),
        ("to_float", 3, 3.0),
        ("to_float", " 2.5 ", 2.5),
        ("to_opt_float", "", None),
        ("to_opt_float", "1.91", 1.91),
        ("to_opt_str", 5, "5"),
        ("to_opt_str", None, None),
        ("to_job_id", 7.0, 7),
        ("to_job_id", " 42 ", 42),
        ("to_job_id", "abc-1", "abc-1"),
        ("to_job_id", "", None),
        ("to_links", None, ()),
        ("to_links", "https://a/1.png", ("https://a/1.png",)),
        ("to_links", ("https://a/1.png",), ("https://a/1.png",)),
    ],
)
def test_scalar_hooks_read_the_loose_forms(hook: str, value: Any, expected: Any) -> None:
    result = getattr(_scalars, hook)(value)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("hook", "value"),
    [
        ("to_bool", "maybe"),
        ("to_bool", 2),
        ("to_int", True),
        ("to_int", 7.5),
        ("to_int", "7.5"),
        ("to_int", []),
        ("to_float", False),
        ("to_float", []),
        ("to_opt_str", []),
        ("to_job_id", True),
        ("to_job_id", 7.5),
        ("to_job_id", {}),
        ("to_links", {"a": 1}),
    ],
)
def test_scalar_hooks_refuse_what_they_cannot_read(hook: str, value: Any) -> None:
    with pytest.raises(ValueError, match=r"not a|could not convert"):
        getattr(_scalars, hook)(value)


def test_an_error_answer_with_an_unreadable_id_has_no_job_id() -> None:
    exc = error_from_answer({"status": "failed", "id": {"x": 1}, "message": "no"}, status_code=200)
    assert isinstance(exc, GenerationFailed)
    assert exc.job_id is None


# --- the other value objects ----------------------------------------------------------------


def test_generated_image_size_from_bytes_or_file(tmp_path: Any) -> None:
    from modelslab_async import GeneratedImage

    assert GeneratedImage(url="u", index=0, data=b"abc").size == 3
    path = tmp_path / "1-0.png"
    assert GeneratedImage(url="u", index=0, path=path).size is None
    path.write_bytes(b"12345")
    image = GeneratedImage(url="u", index=0, path=path, job_id=1)
    assert image.size == 5
    assert "data" not in repr(GeneratedImage(url="u", index=0, data=b"\x89PNG"))


def test_batch_result_is_ok_without_an_error_and_holds_paths() -> None:
    from pathlib import Path

    from modelslab_async import BatchResult

    ok = BatchResult(index=3, request=None, generation=None, files=["out/1-0.png"])
    assert ok.ok
    assert ok.files == (Path("out/1-0.png"),)
    failed = BatchResult(index=4, request=None, error=GenerationFailed(1))
    assert not failed.ok


# --- meta: whatever the server sends, nothing fails and nothing is lost ----------------------

_meta_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.sampled_from(["yes", "no", "Yes", " no", "", "0", "12", " 12 ", "²", "x", "1.5"]),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=400)
@given(
    st.dictionaries(
        st.sampled_from([*sorted(_META_FIELDS), "W", "H", "steps", "clip_skip", "outdir"]),
        _meta_values,
    )
)
def test_any_meta_object_is_read_with_every_key_kept(meta: dict[str, Any]) -> None:
    read = _structure_meta(meta)  # never raises
    aliases = {"W": "width", "H": "height", "steps": "num_inference_steps"}
    lenient = {"base64", "temp", "safety_checker"}  # an unreadable yes/no reads as None
    for key, value in meta.items():
        if key in read.extra:
            assert read.extra[key] == value  # an unknown key, kept raw as sent
            continue
        name = aliases.get(key, key)
        assert name in _META_FIELDS
        kept = read.extra.get(name, getattr(read, name))
        assert kept is not None or value in (None, "") or name in lenient, (key, value)
