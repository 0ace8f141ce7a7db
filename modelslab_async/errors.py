"""The exception hierarchy (see README.md, "Errors"), also importable from the package root.

See :mod:`modelslab_async._errors` for the tree.
"""

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

__all__ = [
    "APIError",
    "AmbiguousSubmitError",
    "AuthenticationError",
    "BadRequestError",
    "ClientStateError",
    "ConfigurationError",
    "DownloadError",
    "GenerationFailed",
    "GenerationTimeout",
    "InsufficientCreditsError",
    "JobNotFoundError",
    "ManifestLockedError",
    "ModelsLabError",
    "RateLimitError",
    "RedirectError",
    "RequestValidationError",
    "ResponseFormatError",
    "ServerError",
    "TransportError",
]
