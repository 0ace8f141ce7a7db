"""The exception hierarchy.

```
ModelsLabError
├── RequestValidationError (+ ValueError)    bad input, raised before any network call
├── ConfigurationError (+ ValueError)        missing key, bad base URL or option
│   └── ManifestLockedError                  another run holds the manifest (its pid)
├── ClientStateError (+ RuntimeError)        client used outside ``async with``
├── APIError                                 the API answered with an error
│   ├── AuthenticationError                  invalid / missing key, HTTP 401/403
│   ├── RateLimitError                       HTTP 429 or the API's rate-limit answer
│   ├── InsufficientCreditsError             out of credits, HTTP 402 (stops a batch)
│   ├── BadRequestError                      the API rejected the request (validation, model)
│   │   └── JobNotFoundError                 a recorded job id the API no longer knows
│   ├── RedirectError                        a 3xx answer to an API call (never followed)
│   └── ServerError                          HTTP 5xx
├── GenerationFailed                         the job ended ``failed`` / ``error``
├── GenerationTimeout (+ TimeoutError)       the job did not resolve in time
├── TransportError                           connect error, reset, timeout
│   └── AmbiguousSubmitError                 a submit may have reached the server
├── ResponseFormatError                      HTML page, malformed JSON, unknown status
└── DownloadError                            an image could not be downloaded or decoded
```

Every message is one line, at most a few thousand characters (longer ones are cut, with a
marker), and never contains the API key (see ``_redact``). Job-scoped errors carry
``job_id``; request-scoped ones carry ``url`` where one exists.
"""

from __future__ import annotations

from typing import Any

from ._redact import redact, truncate

JobId = int | str


class ModelsLabError(Exception):
    """Base class of every error the SDK raises."""

    def __init__(self, message: str) -> None:
        self.message = truncate(redact(message))
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.__dict__.copy()))


def _rebuild(cls: type[ModelsLabError], state: dict[str, Any]) -> ModelsLabError:
    obj = cls.__new__(cls)
    Exception.__init__(obj, state.get("message", ""))
    obj.__dict__.update(state)
    return obj


class RequestValidationError(ModelsLabError, ValueError):
    """A request field is out of range or of the wrong type (raised before any network call)."""

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        try:
            shown = redact(repr(value))
        except Exception:  # an int past sys.get_int_max_str_digits(), a broken __repr__
            shown = (
                f"<an integer of {value.bit_length()} bits>"
                if isinstance(value, int)
                else f"<unprintable {type(value).__name__}>"
            )
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"{field}: got {shown}, allowed {allowed}")


class ConfigurationError(ModelsLabError, ValueError):
    """The client is misconfigured (missing key, bad base URL, bad option)."""


class ManifestLockedError(ConfigurationError):
    """Another run (process ``pid``, None if unknown) holds the manifest at ``path``.

    One run per manifest: two runs on one output folder would submit (and pay for) the same
    items twice. The lock is released when the holder ends, however it ends.
    """

    def __init__(self, path: str, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        holder = f"process {pid}" if pid is not None else "another process"
        super().__init__(
            f"manifest {path} is in use by {holder} (one run per manifest): wait for that "
            "run to end, or give this one another output folder or manifest"
        )


class ClientStateError(ModelsLabError, RuntimeError):
    """The client is used outside its ``async with`` block or after it closed."""


class APIError(ModelsLabError):
    """The API answered with an error.

    Attributes: ``status_code`` (HTTP status), ``api_message`` (the API's own message, as
    text), ``url``, ``job_id`` (when the error concerns one job), ``body`` (a short redacted
    excerpt of the answer).
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        api_message: str | None = None,
        url: str | None = None,
        job_id: JobId | None = None,
        body: str | None = None,
    ) -> None:
        self.status_code = status_code
        self.api_message = truncate(redact(api_message)) if api_message is not None else None
        self.url = redact(url) if url is not None else None
        self.job_id = job_id
        self.body = truncate(redact(body)) if body is not None else None
        super().__init__(message)


class AuthenticationError(APIError):
    """The API rejected the key (``Invalid Api Key``, HTTP 401/403).

    Batch-fatal: ``generate_many`` submits nothing more, lets the jobs already running
    finish and download, records every item it took but did not submit as ``NotSubmitted``,
    yields what finished, then raises this error. The CLI exits with code 2.
    """


class RateLimitError(APIError):
    """Too many requests, or the account's queue cap reached.

    ``retry_after`` is the advised wait in seconds. ``queue_limit`` is N when the answer
    names the account's cap on unfinished (queued or processing) jobs, "Rate limit
    exceeded. Maximum N queued requests allowed." (5, 10 or 15 by plan), else None.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        queue_limit: int | None = None,
        **kw: Any,
    ) -> None:
        self.retry_after = retry_after
        self.queue_limit = queue_limit
        super().__init__(message, **kw)


class InsufficientCreditsError(APIError):
    """The account is out of credits (HTTP 402, or a message about credits, balance,
    wallet or subscription).

    Batch-fatal: ``generate_many`` submits nothing more, lets the jobs already running
    finish and download, records every item it took but did not submit as ``NotSubmitted``,
    yields what finished, then raises this error. Top up and rerun the same command: the
    rerun submits exactly the items not done. The CLI exits with code 3.
    """


class BadRequestError(APIError):
    """The API rejected the request itself (validation error, unknown model)."""


class RedirectError(APIError):
    """An API call was answered with a redirect (HTTP 3xx), which is never followed.

    The key travels in the request body, and a client that follows a 307/308 re-sends the
    body to whatever host the answer names. ``location`` is where the answer pointed; the
    message names its host. Usually ``base_url`` is not the API's final address (an
    ``http://`` URL the server upgrades to ``https://``, a moved path): set it to the final one.
    """

    def __init__(self, message: str, *, location: str | None = None, **kw: Any) -> None:
        self.location = redact(location) if location is not None else None
        super().__init__(message, **kw)


class JobNotFoundError(BadRequestError):
    """A rerun fetched a job id its manifest recorded, and the API answered "not found".

    The job may have expired on the server, or the answer may be transient; submitting the
    item again would be a second charge, so the item fails with this error (``job_id``
    names the job) unless the user opts in (``retry_failed=True``, ``--retry-failed``).
    """


class ServerError(APIError):
    """The API answered HTTP 5xx."""


class GenerationFailed(ModelsLabError):
    """The job ended ``failed`` (or ``error``) on the server.

    ``transient`` is true for the API's "Failed, Try Again" answer (a model warming up),
    which a resubmission usually fixes.
    """

    def __init__(
        self, job_id: JobId | None, api_message: str | None = None, *, transient: bool = False
    ) -> None:
        self.job_id = job_id
        self.api_message = truncate(redact(api_message)) if api_message is not None else None
        self.transient = transient
        what = f"job {job_id}" if job_id not in (None, "") else "job"
        super().__init__(f"{what} failed: {self.api_message or 'no message from the API'}")


class GenerationTimeout(ModelsLabError, TimeoutError):
    """The job did not resolve in time; it may still finish: fetch it later by ``job_id``."""

    def __init__(self, job_id: JobId, waited: float) -> None:
        self.job_id = job_id
        self.waited = waited
        super().__init__(
            f"job {job_id} not ready after {waited:.1f}s; it may still finish "
            f"(fetch it later with client.fetch({job_id!r}))"
        )


class TransportError(ModelsLabError):
    """The HTTP exchange failed: connection refused or reset, timeout, cut-off body."""

    def __init__(self, message: str, *, url: str | None = None, kind: str = "error") -> None:
        self.url = redact(url) if url is not None else None
        self.kind = kind
        super().__init__(message)


class AmbiguousSubmitError(TransportError):
    """A submit failed after its body was sent: the job may exist (and be charged).

    It is not retried, to avoid a duplicate charge, unless the client was created with
    ``retry_ambiguous_submits=True``.
    """


class ResponseFormatError(ModelsLabError):
    """The answer is not what the API sends: an HTML page, malformed JSON, unknown status."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        url: str | None = None,
        body: str | None = None,
        path: str | None = None,
    ) -> None:
        self.status_code = status_code
        self.url = redact(url) if url is not None else None
        self.body = truncate(redact(body)) if body is not None else None
        self.path = path
        super().__init__(message)


class DownloadError(ModelsLabError):
    """An image could not be downloaded, verified or decoded (the message names the job)."""

    def __init__(
        self,
        message: str,
        *,
        url: str,
        job_id: JobId | None = None,
        status_code: int | None = None,
    ) -> None:
        self.url = redact(url)
        self.job_id = job_id
        self.status_code = status_code
        # Image links are named by a uuid, not the job id: say which job the image is of.
        super().__init__(f"job {job_id}: {message}" if job_id not in (None, "") else message)
