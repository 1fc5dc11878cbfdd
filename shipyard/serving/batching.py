"""Micro-batching: requests that arrive while a forward pass runs share the next one.

No request waits for company: the first one starts a pass at once; those arriving during it queue and
go together in the next pass (up to ``max_rows`` rows). Under load that turns N forward passes and N
thread hops into one of each.

A pass that took under ``inline_below`` seconds last time runs on the event loop itself: for a small
model the thread hop (about 100 us) costs as much as the forward pass, and a pass that short holds up
nothing. Slower models stay on the forward thread, so the loop keeps answering /health and /metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

Forward = Callable[[np.ndarray], np.ndarray]


class Batcher:
    """Group concurrent requests for one model into batched forward passes on one thread."""

    def __init__(self, forward: Forward, executor: ThreadPoolExecutor, max_rows: int = 1024,
                 inline_below: float = 0.001) -> None:
        self._forward = forward
        self._executor = executor
        self._max_rows = max_rows
        self._inline_below = inline_below
        self._last_seconds = float("inf")  # the first pass (the warm-up) runs on the thread and is timed
        self._pending: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = []
        self._running = False

    async def predict(self, rows: np.ndarray) -> np.ndarray:
        """Return the model's output for ``rows``, computed together with concurrent requests."""
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._pending.append((rows, future))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch = self._take()
                inputs = batch[0][0] if len(batch) == 1 else np.concatenate([rows for rows, _ in batch])
                try:
                    out = await self._run(loop, inputs)
                    if len(batch) > 1 and (out.ndim == 0 or out.shape[0] != inputs.shape[0]):
                        raise ValueError(f"the model returned {out.shape[0] if out.ndim else 0} rows "
                                         f"for {inputs.shape[0]} inputs")
                except Exception as exc:  # noqa: BLE001 - handed to each waiting request
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                start = 0
                for rows, future in batch:
                    part = out if len(batch) == 1 else out[start:start + rows.shape[0]]
                    start += rows.shape[0]
                    if not future.done():  # a timed-out request has given up on its answer
                        future.set_result(part)
        finally:
            self._running = False

    async def _run(self, loop: asyncio.AbstractEventLoop, inputs: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        if self._last_seconds < self._inline_below:
            out = self._forward(inputs)
            self._last_seconds = time.perf_counter() - started
            await asyncio.sleep(0)  # let the loop read the requests that arrived meanwhile
        else:
            out = await loop.run_in_executor(self._executor, self._forward, inputs)
            self._last_seconds = time.perf_counter() - started
        return out

    def _take(self) -> list[tuple[np.ndarray, asyncio.Future[np.ndarray]]]:
        batch: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = []
        rows = 0
        while self._pending and (not batch or rows + self._pending[0][0].shape[0] <= self._max_rows):
            item = self._pending.pop(0)
            batch.append(item)
            rows += item[0].shape[0]
        return batch
