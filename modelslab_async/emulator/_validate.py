"""Request validation in the real service's (Laravel) style: ``{"field": ["message", ...]}``.

Numbers may arrive as JSON numbers or numeric strings (``"512"``); yes/no fields accept
``"yes"``/``"no"``, ``"true"``/``"false"`` and JSON booleans. ``null`` or ``""`` in an
optional field means "use the default".
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["SAFETY_CHECKER_TYPES", "Text2Img", "parse_int_id", "validate_text2img"]

SAFETY_CHECKER_TYPES = ("blur", "sensitive_content_text", "pixelate", "black")
MAX_STEPS = 20

_KNOWN = frozenset(
    {
        "key",
        "model_id",
        "prompt",
        "negative_prompt",
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
        "enhance_prompt",
        "clip_skip",
        "instant_response",
    }
)
_YES = frozenset({"yes", "true", "1"})
_NO = frozenset({"no", "false", "0"})
Errors = dict[str, list[str]]


def _label(field: str) -> str:
    return field.replace("_", " ")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            f = float(value.strip())
        except ValueError:
            return None
        return f if math.isfinite(f) else None
    return None


class _Checker:
    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.errors: Errors = {}

    def fail(self, field: str, message: str) -> None:
        self.errors.setdefault(field, []).append(message)

    def integer(self, field: str, default: int, lo: int | None, hi: int | None) -> int:
        raw = self.body.get(field)
        if _missing(raw):
            return default
        f = _number(raw)
        if f is None or f != int(f):
            self.fail(field, f"The {_label(field)} must be an integer.")
            return default
        value = int(f)
        if lo is not None and value < lo:
            self.fail(field, f"The {_label(field)} must be at least {lo}.")
        if hi is not None and value > hi:
            self.fail(field, f"The {_label(field)} must not be greater than {hi}.")
        return value

    def number(self, field: str, default: float, lo: float, hi: float) -> float:
        raw = self.body.get(field)
        if _missing(raw):
            return default
        value = _number(raw)
        if value is None:
            self.fail(field, f"The {_label(field)} must be a number.")
            return default
        if value < lo:
            self.fail(field, f"The {_label(field)} must be at least {_fmt(lo)}.")
        if value > hi:
            self.fail(field, f"The {_label(field)} must not be greater than {_fmt(hi)}.")
        return value

    def yes_no(self, field: str, default: bool) -> bool:
        raw = self.body.get(field)
        if _missing(raw):
            return default
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _YES:
            return True
        if text in _NO:
            return False
        self.fail(field, f"The selected {_label(field)} is invalid.")
        return default

    def string(self, field: str, default: str) -> str:
        raw = self.body.get(field)
        if raw is None:
            return default
        if not isinstance(raw, str):
            self.fail(field, f"The {_label(field)} must be a string.")
            return default
        return raw


def _fmt(x: float) -> str:
    return str(int(x)) if x == int(x) else str(x)


def _echo_number(x: float) -> float | int:
    """Integral floats echo as ints (the service's PHP JSON encoder does the same)."""
    return int(x) if x == int(x) else x


class Text2Img:
    """A validated text2img request, normalised."""

    __slots__ = (
        "base64",
        "extras",
        "fields",
        "height",
        "prompt",
        "samples",
        "seed",
        "seed_sent",
        "steps",
        "temp",
        "track_id",
        "webhook",
        "width",
    )

    def __init__(self, fields: dict[str, Any], extras: dict[str, Any]) -> None:
        self.fields = fields  # normalised known fields, for ``meta``
        self.extras = extras  # unknown fields, echoed in ``meta`` as sent
        self.prompt: str = fields["prompt"]
        self.width: int = fields["width"]
        self.height: int = fields["height"]
        self.samples: int = fields["samples"]
        self.steps: int = fields["num_inference_steps"]
        self.seed: int | None = fields["seed"]
        self.seed_sent: Any = None
        self.base64: bool = fields["base64"]
        self.temp: bool = fields["temp"]
        self.webhook: str | None = fields["webhook"]
        self.track_id: Any = fields["track_id"]

    def meta(self, *, seed: int, file_prefix: str, job_id: int) -> dict[str, Any]:
        """The ``meta`` object echoed in answers, laid out like the fixtures."""
        f = self.fields
        yn = _yes_no
        meta: dict[str, Any] = {
            "base64": yn(f["base64"]),
            "clip_skip": f["clip_skip"],
            "enhance_prompt": yn(f["enhance_prompt"]),
            "file_prefix": file_prefix,
            "guidance_scale": _echo_number(f["guidance_scale"]),
            "height": f["height"],
            "id": str(job_id),
            "injected_noise_alpha": _echo_number(f["injected_noise_alpha"]),
            "instant_response": "no",
            "model_id": f["model_id"],
            "n_samples": f["samples"],
            "negative_prompt": f["negative_prompt"],
            "num_inference_steps": f["num_inference_steps"],
            "opacity": 0.8,
            "outdir": "out",
            "padding_down": 10,
            "padding_right": 10,
            "prompt": f["prompt"],
            "rescale": "yes",
            "safety_checker": yn(f["safety_checker"]),
            "safety_checker_type": f["safety_checker_type"],
            "scale_down": 6,
            "seed": seed,
            "sigma_threshold": _echo_number(f["sigma_threshold"]),
            "temp": yn(f["temp"]),
            "track_id": f["track_id"],
            "true_cfg_scale": _echo_number(f["true_cfg_scale"]),
            "use_cfg_zero_star": f["use_cfg_zero_star"],
            "use_zero_init": f["use_zero_init"],
            "watermark": "no",
            "webhook": f["webhook"],
            "width": f["width"],
            "zero_steps": f["zero_steps"],
        }
        for name, value in self.extras.items():
            meta.setdefault(name, value)
        return meta


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def validate_text2img(body: dict[str, Any]) -> Text2Img | Errors:
    """The normalised request, or the per-field error messages."""
    c = _Checker(body)
    prompt = body.get("prompt")
    if _missing(prompt):
        c.fail("prompt", "The prompt field is required.")
    elif not isinstance(prompt, str):
        c.fail("prompt", "The prompt must be a string.")
    fields: dict[str, Any] = {
        "prompt": prompt if isinstance(prompt, str) else "",
        "model_id": c.string("model_id", "flux") or "flux",
        "negative_prompt": c.string("negative_prompt", ""),
        "width": c.integer("width", 512, 1, 1024),
        "height": c.integer("height", 512, 1, 1024),
        "samples": c.integer("samples", 1, 1, 4),
        "num_inference_steps": min(c.integer("num_inference_steps", MAX_STEPS, 1, None), 20),
        "safety_checker": c.yes_no("safety_checker", True),
        "seed": None,
        "guidance_scale": c.number("guidance_scale", 7.5, 1.0, 20.0),
        "injected_noise_alpha": c.number("injected_noise_alpha", 0.75, 0.0, 1.0),
        "sigma_threshold": c.number("sigma_threshold", 0.45, 0.0, 1.0),
        "true_cfg_scale": c.number("true_cfg_scale", 1.0, 0.0, 10.0),
        "use_cfg_zero_star": c.yes_no("use_cfg_zero_star", True),
        "use_zero_init": c.yes_no("use_zero_init", False),
        "zero_steps": c.integer("zero_steps", 0, 0, None),
        "base64": c.yes_no("base64", False),
        "temp": c.yes_no("temp", False),
        "enhance_prompt": c.yes_no("enhance_prompt", False),
        "clip_skip": body.get("clip_skip"),
        "track_id": body.get("track_id"),
        "webhook": None,
    }
    sct = body.get("safety_checker_type")
    if _missing(sct):
        fields["safety_checker_type"] = "sensitive_content_text"
    elif sct not in SAFETY_CHECKER_TYPES:
        c.fail("safety_checker_type", "The selected safety checker type is invalid.")
    else:
        fields["safety_checker_type"] = sct
    if not _missing(body.get("seed")):
        fields["seed"] = c.integer("seed", 0, 0, 2**32 - 1)
    webhook = body.get("webhook")
    if not _missing(webhook):
        if not isinstance(webhook, str) or not webhook.startswith(("http://", "https://")):
            c.fail("webhook", "The webhook must be a valid URL.")
        else:
            fields["webhook"] = webhook
    if c.errors:
        return c.errors
    extras = {k: v for k, v in body.items() if k not in _KNOWN}
    req = Text2Img(fields, extras)
    seed_sent = body.get("seed")
    req.seed_sent = None if _missing(seed_sent) else seed_sent
    return req


def parse_int_id(value: Any) -> int | None:
    """A job id from a path segment or JSON value (``123``, ``"123"``), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None
