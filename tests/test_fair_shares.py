"""Tenants' shares of a process (jetstream/fair.py ``Shares``): many for a tenant alone, a
few each while another tenant is present — and present a moment after its last input."""

from __future__ import annotations

from jetagent.jetstream.fair import FairQueue, Shares


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_tenant_alone_gets_many_and_each_of_several_gets_a_few() -> None:
    clock = _Clock()
    shares = Shares(alone=32, shared=4, linger_s=1.0, clock=clock)
    assert shares.limit() == 32  # nobody there yet
    shares.enter("a")
    shares.enter("a")
    assert shares.limit() == 32  # a alone, however many it sends
    shares.enter("b")
    assert shares.limit() == 4  # b arrived: each gets a few, a's burst included
    shares.leave("b")
    clock.now += 0.5
    assert shares.limit() == 4  # b's next input (its next step's result) is due soon
    clock.now += 0.6
    assert shares.limit() == 32  # b gone for longer: a has the process again
    shares.leave("a")
    shares.leave("a")
    assert shares.present() == 1  # a, a moment ago
    clock.now += 1.1
    assert shares.present() == 0


def test_a_share_is_never_above_the_limit_alone_nor_below_one() -> None:
    assert Shares(alone=8, shared=256, linger_s=1.0).shared == 8
    assert Shares(alone=0, shared=0, linger_s=1.0).limit() == 1


def test_a_key_whose_share_is_taken_waits_its_turn() -> None:
    queue: FairQueue[str] = FairQueue()
    for item in ["a1", "a2", "a3"]:
        queue.put("a", item)
    queue.put("b", "b1")
    active = {"a": 4}
    assert queue.take(lambda key: active.get(key, 0) >= 4) == ("b", "b1")
    assert queue.take(lambda key: active.get(key, 0) >= 4) is None
    assert queue.take() == ("a", "a1")
