"""What dispatcher tests hand a ``Dispatcher`` in place of a fleet: one engine's link, whose stub
the test fakes, and a fleet that always picks it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class FakeLink:
    stub: Any
    key: str = "engine-0"
    in_flight: int = 0
    state: str = "serving"
    full_until: float = 0.0
    last_error: str | None = None


class OneEngine:
    def __init__(self, link: FakeLink) -> None:
        self.link = link

    def pick(self, key: str, *, overflow: bool) -> FakeLink:
        return self.link

    def suspect(self, link: FakeLink, why: str) -> None:
        pass

    def drain(self, link: FakeLink, why: str) -> None:
        pass
