"""The bounded mailbox every actor reads from, on both sides of the link.

Control items keep their order and are never dropped: a mailbox that holds
more than ``control_limit`` of them raises ``MailboxOverflow`` so its owner can
declare the reader stuck instead of growing without bound; ``put_always`` is
for the few items that end or move the reader's work, which must get through. Media items go in
lanes, one per stream, each with its drop policy: ``put_latest`` keeps only the
newest item (video: a late frame is worth nothing), ``put_bounded`` keeps the
newest ``limit`` items and drops the oldest (audio), counting every drop.
Control goes first; lanes are served in turn so no stream starves another.
"""

import asyncio
from collections import Counter, deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class MailboxOverflow(Exception):
    """Raised when a reader falls so far behind that control messages pile up."""


class Mailbox(Generic[T]):
    """A bounded mailbox with one ordered control queue and drop-policy media lanes."""

    def __init__(
        self,
        name: str,
        control_limit: int = 10_000,
        on_drop: Callable[[Hashable], None] | None = None,
    ):
        """Initialize the mailbox.

        Args:
            name: Used in errors and logs.
            control_limit: Control items it holds before ``put`` raises.
            on_drop: Called with the lane of every dropped item (for metrics).
        """
        self.name = name
        self._on_drop = on_drop
        self.dropped_total = 0
        self._control_limit = control_limit
        self._control: deque[T] = deque()
        self._lanes: dict[Hashable, deque[T]] = {}
        self._turns: deque[Hashable] = deque()
        self._wakeup = asyncio.Event()
        self.dropped: Counter[Hashable] = Counter()

    def __len__(self) -> int:
        return len(self._control) + sum(len(lane) for lane in self._lanes.values())

    def put(self, item: T) -> None:
        """Queue a control item.

        Raises:
            MailboxOverflow: If the reader has fallen ``control_limit`` items behind.
        """
        if len(self._control) >= self._control_limit:
            raise MailboxOverflow(f"{self.name}: {len(self._control)} control messages unread")
        self._control.append(item)
        self._wakeup.set()

    def put_always(self, item: T) -> None:
        """Queue a control item that must get through even to a reader that fell behind.

        For what ends or moves the reader's work (a session's close, its move to
        another worker): refusing it would leave the reader stuck for good, and
        raising would kill the caller (a supervisor, a timer). Each such item is
        sent at most once per reader, so this does not grow without bound.
        """
        self._control.append(item)
        self._wakeup.set()

    def put_latest(self, lane: Hashable, item: T) -> None:
        """Queue a media item that replaces any unread item of its lane."""
        self.put_bounded(lane, item, 1)

    def put_bounded(self, lane: Hashable, item: T, limit: int) -> None:
        """Queue a media item, dropping its lane's oldest when the lane holds ``limit``."""
        queue = self._lanes.get(lane)
        if queue is None:
            queue = self._lanes[lane] = deque(maxlen=limit)
        if not queue:
            self._turns.append(lane)
        elif len(queue) == queue.maxlen:
            self.dropped[lane] += 1
            self.dropped_total += 1
            if self._on_drop is not None:
                self._on_drop(lane)
        queue.append(item)
        self._wakeup.set()

    def get_nowait(self) -> T | None:
        """The next item, or None when the mailbox is empty."""
        if self._control:
            return self._control.popleft()
        while self._turns:
            lane = self._turns.popleft()
            queue = self._lanes.get(lane)
            if not queue:
                continue
            item = queue.popleft()
            if queue:
                self._turns.append(lane)
            return item
        return None

    async def get(self) -> T:
        """Wait for the next item."""
        while True:
            item = self.get_nowait()
            if item is not None:
                return item
            self._wakeup.clear()
            await self._wakeup.wait()

    def discard_lanes(self, predicate: Callable[[Hashable], bool]) -> None:
        """Forget the lanes whose key matches, with their unread items (a stream that ended)."""
        for lane in [lane for lane in self._lanes if predicate(lane)]:
            del self._lanes[lane]
            self.dropped.pop(lane, None)
