"""Protected work, the words every part of the registry shares: a piece of ``Work``, the
refusal ``ShutdownInProgress``, and the mark of code running inside protected work."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable
from typing import Any

from ._report import WorkKind


class ShutdownInProgress(RuntimeError):
    """Raised by ``spawn``/``protect`` when the process is draining and will not accept new work.

    Answer the caller with 503 (or re-queue the work elsewhere): nothing was started.
    """


class Work:
    """One piece of protected work: an in-flight request or a background job."""

    __slots__ = ("__weakref__", "_cancel", "_name", "future", "kind", "started")

    def __init__(
        self,
        kind: WorkKind,
        name: str | Callable[[], str],
        cancel: Callable[[], object] | None,
        future: asyncio.Future[Any] | None = None,
    ) -> None:
        if cancel is None and future is None:
            raise TypeError("Work needs a cancel callable or a future to cancel")
        self.kind = kind
        self._name = name  # or what makes it, asked only if the drain says the name
        self.started = time.monotonic()
        self._cancel = cancel
        self.future = future  # the job's task or future, so a runner can tell it from the rest

    @property
    def name(self) -> str:
        if not isinstance(self._name, str):
            self._name = self._name()
        return self._name

    @property
    def cancel(self) -> Callable[[], object]:
        """Cancels the work; without a callable of its own, its future's ``cancel``."""
        if self._cancel is not None:
            return self._cancel
        assert self.future is not None
        return self.future.cancel


# True inside a request or job that is itself protected: work it spawns during the drain is
# its follow-up and is accepted, while a spawn from anywhere else is refused. Set where
# registering costs nothing that matters (requests that come in during the drain, trio,
# children of jobs under run()); elsewhere the registry tells protected tasks apart itself.
inside_protected: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "graceful_web_inside_protected", default=False
)
