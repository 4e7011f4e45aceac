"""Merging concurrent requests for one task into one model call, off the event loop.

Each (task, dense) key has a queue and a worker coroutine. The worker takes the first waiting request, then
keeps taking more for up to ``max_wait`` seconds or until ``max_batch`` inputs are gathered, runs the model
once in the executor (one inference thread: torch already uses every core for one call) and hands every
request its own slice of the predictions. The event loop only moves futures around.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

Key = tuple[str, bool]
Run = Callable[[str, list[str], bool], list[Any]]


class Batcher:
    def __init__(self, run: Run, executor: Executor, max_batch: int, max_wait: float) -> None:
        self._run, self._executor = run, executor
        self.max_batch, self.max_wait = max_batch, max_wait
        self._queues: dict[Key, asyncio.Queue] = {}
        self._workers: dict[Key, asyncio.Task] = {}

    async def submit(self, task: str, texts: list[str], dense: bool = False) -> list[Any]:
        key = (task, dense)
        if key not in self._queues:
            self._queues[key] = asyncio.Queue()
            self._workers[key] = asyncio.create_task(self._work(key, self._queues[key]))
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._queues[key].put((texts, fut))
        return await fut

    async def _work(self, key: Key, queue: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await queue.get()]
            n = len(items[0][0])
            deadline = loop.time() + self.max_wait
            while n < self.max_batch:
                try:
                    item = queue.get_nowait() if queue.qsize() else await asyncio.wait_for(
                        queue.get(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    break
                items.append(item)
                n += len(item[0])
            items = [(texts, fut) for texts, fut in items if not fut.cancelled()]  # clients that went away
            if not items:
                continue
            texts = [t for ts, _ in items for t in ts]
            try:
                preds = await loop.run_in_executor(self._executor, self._run, key[0], texts, key[1])
            except Exception as err:  # noqa: BLE001 - handed to every waiting request, which maps it to a status
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(err)
                continue
            i = 0
            for ts, fut in items:
                if not fut.done():
                    fut.set_result(preds[i : i + len(ts)])
                i += len(ts)

    async def close(self) -> None:
        for worker in self._workers.values():
            worker.cancel()
        await asyncio.gather(*self._workers.values(), return_exceptions=True)
        self._workers.clear()
        self._queues.clear()
