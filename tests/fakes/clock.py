"""A clock tests move by hand, for code that takes ``clock=time.monotonic``."""

from __future__ import annotations


class ManualClock:
    """Monotonic seconds that only change when ``advance`` is called."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``."""
        self.now += seconds
