"""Long work for a page (a batch of predictions, an evaluation, a probe) in a background thread, so
that the page stays live and draws a progress bar from `done` / `total` while it runs."""
from __future__ import annotations

import threading


class BackgroundJob:
    """Subclasses implement `work()`, which returns the result and may call `progress(done, total)`."""

    def __init__(self, total: int = 0):
        self.done, self.total = 0, total
        self.result = None
        self.error: str | None = None
        self._thread: threading.Thread | None = None

    def work(self):
        raise NotImplementedError

    @property
    def finished(self) -> bool:
        return self.result is not None or self.error is not None

    @property
    def fraction(self) -> float:
        return self.done / max(1, self.total)

    def progress(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total

    def start(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            self.result = self.work()
        except Exception as e:  # shown on the page; the thread must not die silently
            self.error = f"{type(e).__name__}: {e}"
