"""A blocking facade over the asynchronous client, for scripts and notebooks.

``modelslab_async.sync.Client`` runs the same engine (one event loop in a background
thread, through an anyio blocking portal) and exposes the same calls without ``await``::

    from modelslab_async.sync import Client

    with Client() as client:
        gen = client.text2img(prompt="a red fox", dest="out/")
        for result in client.generate_many(prompts, dest="out/", manifest="run.jsonl"):
            print(result.index, result.files)

Inside async code use :class:`modelslab_async.Client` instead: a blocking call would
stall the caller's event loop while it waits.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._batch import BatchOptions, RequestLike
from ._client import Client as AsyncClient
from ._errors import ClientStateError, JobId
from ._types import BatchResult, GeneratedImage, Generation, Job, Text2ImgRequest

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Client"]


class Client:
    """The blocking twin of :class:`modelslab_async.Client` (same arguments)."""

    def __init__(self, api_key: str | None = None, **options: Any) -> None:
        self._async = AsyncClient(api_key, **options)
        self._stack: contextlib.ExitStack | None = None
        self._portal: BlockingPortal | None = None

    def __repr__(self) -> str:
        return f"sync.{self._async!r}"

    def __enter__(self) -> Client:
        if self._stack is not None:
            raise ClientStateError("the client is already open")
        stack = contextlib.ExitStack()
        try:
            portal = stack.enter_context(start_blocking_portal())
            stack.enter_context(portal.wrap_async_context_manager(self._async))
        except BaseException:
            stack.close()
            raise
        self._stack, self._portal = stack, portal
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the client and stop its event loop thread."""
        stack, self._stack, self._portal = self._stack, None, None
        if stack is not None:
            stack.close()

    @property
    def _p(self) -> BlockingPortal:
        if self._portal is None:
            raise ClientStateError("the client is not open: use it as `with Client() as client:`")
        return self._portal

    def submit(
        self, request: Text2ImgRequest | Mapping[str, Any] | None = None, /, **fields: Any
    ) -> Job | Generation:
        """See :meth:`modelslab_async.Client.submit`."""
        return self._p.call(functools.partial(self._async.submit, request, **fields))

    def wait(self, job: Job | Generation, *, timeout: float | None = None) -> Generation:
        """See :meth:`modelslab_async.Client.wait`."""
        return self._p.call(functools.partial(self._async.wait, job, timeout=timeout))

    def fetch(self, job_id: JobId) -> Job | Generation:
        """See :meth:`modelslab_async.Client.fetch`."""
        return self._p.call(self._async.fetch, job_id)

    def download(self, generation: Generation, dest: str | None = None) -> list[GeneratedImage]:
        """See :meth:`modelslab_async.Client.download`."""
        return self._p.call(self._async.download, generation, dest)

    def text2img(
        self,
        request: Text2ImgRequest | Mapping[str, Any] | None = None,
        /,
        *,
        dest: str | None = None,
        timeout: float | None = None,
        **fields: Any,
    ) -> Generation:
        """See :meth:`modelslab_async.Client.text2img`."""
        call = functools.partial(
            self._async.text2img, request, dest=dest, timeout=timeout, **fields
        )
        return self._p.call(call)

    def generate_many(
        self, requests: Iterable[RequestLike], **options: Unpack[BatchOptions]
    ) -> Iterator[BatchResult]:
        """See :meth:`modelslab_async.Client.generate_many`; yields results as they finish.

        Leaving the loop early stops the batch (the generator's ``close``).
        """
        portal = self._p
        results = self._async.generate_many(requests, **options)
        try:
            while True:
                try:
                    yield portal.call(results.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(results, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(RuntimeError):  # the portal stopped: nothing to close
                    portal.call(aclose)
