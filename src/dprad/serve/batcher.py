"""Server-side micro-batching: concurrent requests are scored together.

Requests wait on an asyncio queue; a single worker takes the first one, keeps collecting for a few
milliseconds (or until ``max_reports`` are waiting), then calls the predictor once on all of them in a
worker thread. The predictor sorts them by length into token-bounded micro-batches (the training code's
``micro_batches``), so many small concurrent requests cost about what one large offline call costs.
While a batch is being scored, new requests queue up and form the next batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import anyio
import numpy as np

from dprad.data.reports import Report


@dataclass(frozen=True)
class BatchStats:
    batches: int
    reports: int
    seconds: float  # time spent inside the predictor


class MicroBatcher:
    """``await submit(reports)`` -> their probabilities ``(n, L)``, scored with other concurrent requests."""

    def __init__(
        self,
        predict: Callable[[Sequence[Report]], np.ndarray],
        *,
        max_wait_ms: float = 5.0,
        max_reports: int = 512,
    ) -> None:
        self._predict = predict
        self.max_wait = max_wait_ms / 1000.0
        self.max_reports = max_reports
        self._queue: asyncio.Queue[tuple[Sequence[Report], asyncio.Future[np.ndarray]]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._batches = self._reports = 0
        self._seconds = 0.0

    @property
    def stats(self) -> BatchStats:
        return BatchStats(self._batches, self._reports, self._seconds)

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="dprad-micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def submit(self, reports: Sequence[Report]) -> np.ndarray:
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        fut: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self._queue.put((reports, fut))
        return await fut

    async def _run(self) -> None:
        assert self._queue is not None
        queue = self._queue
        while True:
            batch = [await queue.get()]
            n = len(batch[0][0])
            deadline = time.monotonic() + self.max_wait
            while n < self.max_reports:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                try:
                    item = await asyncio.wait_for(queue.get(), timeout)
                except asyncio.TimeoutError:
                    break
                batch.append(item)
                n += len(item[0])
            while n < self.max_reports and not queue.empty():  # whatever else is already waiting
                item = queue.get_nowait()
                batch.append(item)
                n += len(item[0])
            await self._score(batch)

    async def _score(self, batch: list[tuple[Sequence[Report], asyncio.Future[np.ndarray]]]) -> None:
        reports = [r for rs, _ in batch for r in rs]
        t0 = time.perf_counter()
        try:
            probs = await anyio.to_thread.run_sync(self._predict, reports)  # (N, L)
        except Exception as err:  # noqa: BLE001 - every waiting request gets the failure
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(err)
            return
        finally:
            self._seconds += time.perf_counter() - t0
        self._batches += 1
        self._reports += len(reports)
        start = 0
        for rs, fut in batch:
            if not fut.done():  # the client may have gone away
                fut.set_result(probs[start : start + len(rs)])
            start += len(rs)
