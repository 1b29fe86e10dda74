"""The dashboard's shared results and background work (no Streamlit here, so tests drive them directly).

* :class:`ResultStore` — a thread-safe, bounded memo shared by all sessions (held in
  ``st.cache_resource``) for results computed with a progress bar (evaluations, sensitivities).
* :class:`BackgroundJob` — runs ``target(progress, should_stop)`` in a daemon thread (fine-tuning,
  sensitivity measurement); the page polls its events and sets its stop flag.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from lrviz.errors import LrvizError

__all__ = ["BackgroundJob", "ResultStore"]


class ResultStore:
    """Thread-safe ``key → value`` memo shared by all sessions (held in ``st.cache_resource``).

    Used for results that need a progress bar while they are computed (evaluations), which a
    Streamlit-cached function cannot show. Bounded: the oldest entries go first.
    """

    def __init__(self, max_items: int = 512):
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.max_items = max_items

    def get(self, key, default=None):
        with self._lock:
            return self._data.get(key, default)

    def put(self, key, value) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.max_items:
                self._data.popitem(last=False)

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._data

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)


class BackgroundJob:
    """Run ``target(progress, should_stop)`` in a daemon thread and collect its events.

    The UI polls :attr:`events`, :attr:`done`, :attr:`result`, :attr:`error`; :meth:`stop` sets the
    flag that ``should_stop()`` returns. Exceptions are kept as text (``error``), never re-raised.
    """

    def __init__(self, target: Callable[[Callable[[dict], None], Callable[[], bool]], Any], name: str = "job"):
        self._target = target
        self.name = name
        self.events: list[dict] = []
        self.result: Any = None
        self.error: str | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self._stop = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> "BackgroundJob":
        if self._thread is not None:
            raise LrvizError("job already started")
        self.started_at = time.time()
        self._thread = threading.Thread(target=self._run, name=f"lrviz-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _progress(self, event: dict) -> None:
        with self._lock:
            self.events.append(dict(event))

    def _run(self) -> None:
        try:
            self.result = self._target(self._progress, self._stop.is_set)
        except LrvizError as exc:
            self.error = str(exc)
        except Exception as exc:  # keep the cause for the UI, log the trace for developers
            self.error = f"{type(exc).__name__}: {exc}"
            self.trace = traceback.format_exc()
        finally:
            self.finished_at = time.time()
            self._done.set()

    def stop(self) -> None:
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def running(self) -> bool:
        return self._thread is not None and not self.done

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self.events)

