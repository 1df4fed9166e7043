"""Retention of finished executions (``EXECUTION_RETENTION``): the state file stays bounded.

What is old is decided here, purely (``cutoff``); the store does the SQL. A sweep deletes
root executions that ended before the cutoff, each with the sub-workflow runs below it, a
batch of about ``BATCH`` executions per transaction, so the writers waiting meanwhile are held
up for one small transaction at a time. A tree with a run still going is left whole, and so
is one younger than its idempotency key's 24 hours (``Store.delete_finished``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final

from engine.core.events import isoformat
from orchestrator.errors import StoreUnavailable
from orchestrator.store import Store, SweepMark

log = logging.getLogger(__name__)

BATCH: Final = 500
"""Executions deleted per transaction, about: a tree is deleted whole."""
SWEEP_EVERY: Final = 600.0
FIRST_SWEEP_AFTER: Final = 60.0
"""Seconds after start: once the runs that were going are taken up again."""
PROGRESS_EVERY: Final = 10.0
"""Seconds between the lines a long sweep logs while it goes on."""


def cutoff(now: float, retention: float) -> float | None:
    """The instant before which a finished execution is old; None: keep all (retention 0)."""
    if retention <= 0:
        return None
    return now - retention


class Retention:
    """Deletes old finished executions, one sweep now and then."""

    def __init__(
        self,
        store: Store,
        retention: float,
        *,
        clock: Callable[[], float] = time.time,
        batch: int = BATCH,
        progress_every: float = PROGRESS_EVERY,
    ) -> None:
        self._store = store
        self._retention = retention
        self._clock = clock
        self._batch = batch
        self._progress_every = progress_every

    async def sweep(self) -> int:
        """Delete everything old at this moment, batch by batch; returns how many runs."""
        now = self._clock()
        before = cutoff(now, self._retention)
        if before is None:
            return 0
        deleted = 0
        began = told = time.monotonic()
        mark: SweepMark | None = None
        while True:
            swept = await self._store.delete_finished(before, self._batch, now=now, after=mark)
            deleted += swept.deleted
            if swept.resume is None:
                break
            mark = swept.resume
            if time.monotonic() - told >= self._progress_every:
                # a backlog (retention turned on, or shortened) takes minutes: show it moving
                told = time.monotonic()
                log.info(
                    "deleting executions finished before %s: %d so far, up to those created at %s",
                    isoformat(before),
                    deleted,
                    isoformat(mark.created_at),
                )
        if deleted:
            log.info(
                "deleted %d executions finished before %s in %.1f s",
                deleted,
                isoformat(before),
                time.monotonic() - began,
            )
        return deleted

    async def run(self) -> None:
        """Sweep shortly after start, then every ``SWEEP_EVERY`` seconds, for good."""
        await asyncio.sleep(FIRST_SWEEP_AFTER)
        while True:
            try:
                await self.sweep()
            except StoreUnavailable as exc:
                # the store logs its trouble once; the next sweep takes up what is left
                log.warning("retention sweep put off: %s", exc)
            await asyncio.sleep(SWEEP_EVERY)
