"""modelslab_async: an asyncio-first SDK for the ModelsLab text-to-image (Flux) API."""

# No ``from __future__ import annotations`` here: it would add a public ``annotations`` name.
from importlib import import_module as _import_module
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from ._batch import BatchOptions, BatchProgress
from ._client import Client, ClientStats
from ._download import DownloadPolicy
from ._errors import (
    AmbiguousSubmitError,
    APIError,
    AuthenticationError,
    BadRequestError,
    ClientStateError,
    ConfigurationError,
    DownloadError,
    GenerationFailed,
    GenerationTimeout,
    InsufficientCreditsError,
    JobNotFoundError,
    ManifestLockedError,
    ModelsLabError,
    RateLimitError,
    RedirectError,
    RequestValidationError,
    ResponseFormatError,
    ServerError,
    TransportError,
)
from ._poller import PollPolicy
from ._slots import Lease, LocalSlots, Slots, SlotStatistics
from ._transport import RetryPolicy, Timeouts, set_testing
from ._types import (
    BatchResult,
    GeneratedImage,
    Generation,
    Job,
    Meta,
    SafetyCheckerType,
    Text2ImgRequest,
)
from ._version import __version__
from ._webhook import WebhookReceiver

if _TYPE_CHECKING:
    from ._ray_slots import RaySlots
    from ._redis_slots import RedisSlots

__all__ = [
    "APIError",
    "AmbiguousSubmitError",
    "AuthenticationError",
    "BadRequestError",
    "BatchOptions",
    "BatchProgress",
    "BatchResult",
    "Client",
    "ClientStateError",
    "ClientStats",
    "ConfigurationError",
    "DownloadError",
    "DownloadPolicy",
    "GeneratedImage",
    "Generation",
    "GenerationFailed",
    "GenerationTimeout",
    "InsufficientCreditsError",
    "Job",
    "JobNotFoundError",
    "Lease",
    "LocalSlots",
    "ManifestLockedError",
    "Meta",
    "ModelsLabError",
    "PollPolicy",
    "RateLimitError",
    "RaySlots",
    "RedirectError",
    "RedisSlots",
    "RequestValidationError",
    "ResponseFormatError",
    "RetryPolicy",
    "SafetyCheckerType",
    "ServerError",
    "SlotStatistics",
    "Slots",
    "Text2ImgRequest",
    "Timeouts",
    "TransportError",
    "WebhookReceiver",
    "__version__",
    "set_testing",
]

# Shared slots live behind optional extras: imported on first use, so that
# ``import modelslab_async`` never imports redis or ray.
_LAZY = {"RaySlots": "._ray_slots", "RedisSlots": "._redis_slots"}


def __getattr__(name: str) -> _Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    obj = getattr(_import_module(_LAZY[name], __name__), name)
    obj.__module__ = __name__
    globals()[name] = obj
    return obj


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


for _name in __all__:
    _obj = globals().get(_name)
    if isinstance(_obj, type) and _obj.__module__.startswith(__name__ + "._"):
        _obj.__module__ = __name__
del _name, _obj
