"""modelslab_async: an asyncio-first SDK for the ModelsLab text-to-image (Flux) API."""

# No ``from __future__ import annotations`` here: it would add a public ``annotations`` name.
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
    ModelsLabError,
    RateLimitError,
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
    "Job",
    "Lease",
    "LocalSlots",
    "Meta",
    "ModelsLabError",
    "PollPolicy",
    "RateLimitError",
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

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith(__name__ + "._"):
        _obj.__module__ = __name__
del _name, _obj
