"""Items gathered on the event loop and handed in batches to a thread of their own.

The access log's appender and the span exporter both must never make a request wait on a
disk or a collector: the loop only appends to a list; every `every` seconds, or as soon as
`batch` (in the subclass' unit: bytes, spans) wait, the list is handed to the thread through
a queue. What was handed over and not yet done never exceeds `limit`: beyond, new items are
dropped and counted (`dropped_here`), so a stuck consumer costs items, never memory.
"""

from __future__ import annotations

import threading
from queue import SimpleQueue
from typing import Any

STOP = object()  # tells the thread to end, after what was handed before it


class Handoff:
    def __init__(self, loop: Any, name: str, every: float, batch: int, limit: int) -> None:
        self.loop = loop
        self.every = every
        self.batch = batch
        self.limit = limit
        self.items: list[Any] = []
        self.size = 0  # of `items`
        self.timer: Any = None
        self.handed = 0  # handed to the thread (loop thread only)
        self.done = 0  # the thread has finished with (the thread only)
        self.dropped_here = 0  # items dropped because the thread fell behind (loop thread)
        self.queue: SimpleQueue = SimpleQueue()
        self.thread = threading.Thread(target=self.run, name=name, daemon=True)
        self.thread.start()

    def gather(self, item: Any, size: int) -> bool:
        """Keep `item` (of `size`) for the thread: handed over now if a batch is full, else
        within `every`. False when it does not fit under the limit (the caller counts it)."""
        if self.handed - self.done + self.size + size > self.limit:
            return False
        self.items.append(item)
        self.size += size
        if self.size >= self.batch:
            self.flush()
        elif self.timer is None:
            self.timer = self.loop.call_later(self.every, self.flush)
        return True

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        items = self.items
        if items:
            self.items = []
            self.handed += self.size
            self.queue.put(self.batched(items, self.size))
            self.size = 0

    def batched(self, items: list[Any], size: int) -> Any:
        """What the thread receives for these items."""
        return items

    def close(self) -> None:
        """Hand over what waits, then let the thread end."""
        self.flush()
        self.queue.put(STOP)

    def wait_closed(self, timeout: float) -> None:
        """At the worker's exit: the thread finishes what it was handed, within `timeout`."""
        self.thread.join(timeout)

    def run(self) -> None:
        raise NotImplementedError
