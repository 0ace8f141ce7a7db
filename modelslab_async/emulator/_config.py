"""Emulator configuration: frozen attrs classes, validated at construction."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import attrs

EtaMode = Literal["accurate", "under", "over"]
MessageKey = Literal["messege", "message", "mixed"]

ETA_MODES: tuple[str, ...] = ("accurate", "under", "over")
MESSAGE_KEYS: tuple[str, ...] = ("messege", "message", "mixed")

#: Mutually exclusive fault kinds of one endpoint, in the order a draw is matched against them.
EXCLUSIVE_FAULTS: tuple[str, ...] = (
    "http_5xx",
    "reset",
    "truncated",
    "html_200",
    "malformed_json",
)


def _rate(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attr.name} must be within 0..1, got {value!r}")


def _non_negative(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attr.name} must be >= 0, got {value!r}")


def _optional_positive(_inst: object, attr: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attr.name} must be > 0 or None, got {value!r}")


@attrs.frozen
class EndpointFaults:
    """Fault rates (0..1) for one endpoint: ``submit``, ``fetch`` or ``download``.

    ``http_5xx``, ``reset``, ``truncated``, ``html_200`` and ``malformed_json`` are mutually
    exclusive (one seeded draw per request picks at most one; their sum must be <= 1).
    ``slow`` is drawn independently and delays the answer by ``slow_delay`` seconds.
    """

    http_5xx: float = attrs.field(default=0.0, validator=_rate)
    reset: float = attrs.field(default=0.0, validator=_rate)
    slow: float = attrs.field(default=0.0, validator=_rate)
    slow_delay: float = attrs.field(default=2.0, validator=_non_negative)
    truncated: float = attrs.field(default=0.0, validator=_rate)
    html_200: float = attrs.field(default=0.0, validator=_rate)
    malformed_json: float = attrs.field(default=0.0, validator=_rate)

    def __attrs_post_init__(self) -> None:
        total = sum(getattr(self, name) for name in EXCLUSIVE_FAULTS)
        if total > 1.0 + 1e-9:
            raise ValueError(f"sum of exclusive fault rates must be <= 1, got {total}")

    @property
    def any(self) -> bool:
        """True when some fault of this endpoint can fire."""
        return self.slow > 0 or any(getattr(self, name) > 0 for name in EXCLUSIVE_FAULTS)


@attrs.frozen
class Faults:
    """Seeded fault injection per endpoint, plus links that stay 404 longer after ready."""

    submit: EndpointFaults = attrs.field(factory=EndpointFaults)
    fetch: EndpointFaults = attrs.field(factory=EndpointFaults)
    download: EndpointFaults = attrs.field(factory=EndpointFaults)
    late_links: float = attrs.field(default=0.0, validator=_rate)
    late_links_delay: float = attrs.field(default=3.0, validator=_non_negative)


def _duration(value: Any) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        return (float(value), float(value))
    lo, hi = value
    return (float(lo), float(hi))


def _check_duration(_inst: object, _attr: attrs.Attribute[Any], value: tuple[float, float]) -> None:
    lo, hi = value
    if lo < 0 or hi < lo:
        raise ValueError(f"duration must be (lo, hi) with 0 <= lo <= hi, got {value!r}")


def _keys(value: Iterable[str] | str | None) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.split(",")
    return frozenset(k.strip() for k in value if k.strip())


def _positive_int(_inst: object, attr: attrs.Attribute[Any], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attr.name} must be >= 1, got {value!r}")


def _optional_positive_int(_inst: object, attr: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{attr.name} must be >= 1 or None, got {value!r}")


def _optional_non_negative_int(
    _inst: object, attr: attrs.Attribute[Any], value: int | None
) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{attr.name} must be >= 0 or None, got {value!r}")


def _member(choices: tuple[str, ...]) -> Any:
    def check(_inst: object, attr: attrs.Attribute[Any], value: str) -> None:
        if value not in choices:
            raise ValueError(f"{attr.name} must be one of {choices}, got {value!r}")

    return check


@attrs.frozen
class EmulatorConfig:
    """Everything that shapes the emulator's behaviour. All randomness derives from ``seed``.

    See ``docs/emulator.md`` for the meaning of each field.
    """

    workers: int = attrs.field(default=4, validator=_positive_int)
    duration: tuple[float, float] = attrs.field(
        default=(0.2, 0.6), converter=_duration, validator=_check_duration
    )
    seed: int = 0
    sync_threshold: float = attrs.field(default=0.0, validator=_non_negative)
    eta_mode: EtaMode = attrs.field(default="accurate", validator=_member(ETA_MODES))
    eta_error: float = attrs.field(default=0.5, validator=_non_negative)
    link_delay: float = attrs.field(default=0.0, validator=_non_negative)
    fail_rate: float = attrs.field(default=0.0, validator=_rate)
    message_key: MessageKey = attrs.field(default="messege", validator=_member(MESSAGE_KEYS))
    error_http_status: bool = False
    keys: frozenset[str] | None = attrs.field(default=None, converter=_keys)
    max_queued_per_key: int | None = attrs.field(default=None, validator=_optional_positive_int)
    max_concurrent_requests: int | None = attrs.field(
        default=None, validator=_optional_positive_int
    )
    rate_limit: float | None = attrs.field(default=None, validator=_optional_positive)
    retry_after: float = attrs.field(default=1.0, validator=_non_negative)
    queue_retry_after: float = attrs.field(default=30.0, validator=_non_negative)
    credits: int | None = attrs.field(default=None, validator=_optional_non_negative_int)
    base64_prefix: bool = False
    webhook_retries: int = attrs.field(default=3, validator=_positive_int)
    webhook_drop_rate: float = attrs.field(default=0.0, validator=_rate)
    draw_prompt: bool = True
    faults: Faults = attrs.field(factory=Faults)

    @property
    def mean_image_duration(self) -> float:
        """Mean seconds per image of the duration distribution."""
        lo, hi = self.duration
        return (lo + hi) / 2.0
