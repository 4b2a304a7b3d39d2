"""Suite ``listing``: finding workflows — ``jetagent list`` (and the gateway's
``GET /v1/workflows``) over many session views, and an id prefix among many workflows.

A prefix of its own holds ``N`` session views in ``JA_SESSIONS`` (three steps each, as
the projection writes them) and ``N`` workflows in ``JA_WORKFLOWS`` (their ``Started``
messages); both are written straight to the streams, once per suite.

- **list**: one page of 50 through ``jetagent.listing.list_views`` (batched direct gets
  of the bucket's stream), against the key-by-key reading it replaced (``kv.keys()``,
  then one ``kv.get`` per key, as the gateway's first listing did).
- **resolve**: ``Client.resolve(prefix)`` (the stream's subject index, one request per
  100,000 subjects), against resolving a whole id (one direct get).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import msgspec

from jetagent.client import Client
from jetagent.config import Settings
from jetagent.contract import Status
from jetagent.events import Started, encode
from jetagent.jetstream.provision import provision
from jetagent.listing import ViewFilter, list_views
from jetagent.sessions import SessionView, StepView

from ._harness import Benchmark, Contenders, Env, Suite, Target
from ._services import Loop, loop_with_nats

__all__ = ["SUITE"]

BATCHED = "batched direct get"
KEY_BY_KEY = "kv.keys + kv.get each"
PREFIX = "prefix (subject index)"
EXACT = "whole id (one direct get)"
PAGE = 50
_WINDOW = 2048  # publishes in flight while writing the data


class _Data:
    """``count`` session views and workflows under a prefix of their own."""

    def __init__(self, loop: Loop, env: Env, count: int) -> None:
        self.loop = loop
        self.count = count
        self.settings = Settings(nats_url=env.nats_url, prefix="l" + uuid.uuid4().hex[:8])
        self.ids = [str(uuid.uuid4()) for _ in range(count)]
        loop.run(provision(loop.nc, self.settings))
        loop.run(self._write())
        self.client = Client(loop.nc, self.settings)

    async def _write(self) -> None:
        names = self.settings.names
        js = self.loop.js
        start = datetime.now(UTC) - timedelta(hours=1)
        bucket = f"$KV.{names.bucket('SESSIONS')}."
        encoder = msgspec.json.Encoder(decimal_format="string")
        acks = []
        for i, wid in enumerate(self.ids):
            at = start + timedelta(milliseconds=i)
            view = SessionView(
                workflow_id=wid,
                tenant=("acme", "beta")[i % 2],
                status=Status.FINALIZED,
                instruction=f"What is {i} * 7? Then add 1 to it",
                created_at=at,
                updated_at=at,
                ended_at=at,
                steps=[
                    StepView(
                        step_id=str(n),
                        capability=("reasoning", "tools")[n % 2],
                        status="completed",
                        input_tokens=30,
                        output_tokens=20,
                        cost_usd=Decimal("0.0000355"),
                        output="Results: 42",
                    )
                    for n in range(1, 4)
                ],
                last_workflow_seq=i + 1,
            )
            started = Started(
                workflow_id=wid, at=at, tenant=view.tenant, request={"instruction": "x"}
            )
            acks.append(await js.publish_async(bucket + wid, encoder.encode(view)))
            acks.append(
                await js.publish_async(names.workflow_event(wid, "Started"), encode(started))
            )
            if len(acks) >= _WINDOW:
                await asyncio.gather(*acks)
                acks.clear()
        await asyncio.gather(*acks)


def _data(env: Env) -> _Data:
    @contextmanager
    def make() -> Iterator[_Data]:
        with loop_with_nats(env.nats_url, "bench-listing") as loop:
            yield _Data(loop, env, env.size(10_000, 1_000))

    return env.shared("listing", make)


def _timed(loop: Loop, work: object) -> float:
    started = time.perf_counter()
    loop.run(work)  # type: ignore[arg-type]
    return (time.perf_counter() - started) * 1000


@contextmanager
def _list_contenders(env: Env) -> Iterator[Contenders]:
    data = _data(env)
    names = data.settings.names
    wanted = ViewFilter(tenant="acme", statuses=frozenset({Status.FINALIZED}))

    async def batched() -> None:
        listing = await list_views(data.loop.nc, names, wanted, limit=PAGE)
        if len(listing.views) != PAGE or listing.scanned != data.count:
            raise RuntimeError(f"listed {len(listing.views)} of {listing.scanned} views")

    async def key_by_key() -> None:
        kv = await data.loop.js.key_value(names.bucket("SESSIONS"))
        views = []
        for key in sorted(await kv.keys()):
            entry = await kv.get(key)
            view = msgspec.json.decode(entry.value or b"", type=SessionView)
            if wanted.matches(view):
                views.append(view)
        views.sort(key=lambda v: (v.created_at, v.workflow_id), reverse=True)
        if len(views[:PAGE]) != PAGE:
            raise RuntimeError("the key-by-key listing found too few views")

    yield {
        BATCHED: lambda: _timed(data.loop, batched()),
        KEY_BY_KEY: lambda: _timed(data.loop, key_by_key()),
    }


@contextmanager
def _resolve_contenders(env: Env) -> Iterator[Contenders]:
    data = _data(env)
    target = data.ids[len(data.ids) // 2]

    async def prefix() -> None:
        if await data.client.resolve(target[:10]) != target:
            raise RuntimeError("the prefix resolved to another workflow")

    async def exact() -> None:
        if await data.client.resolve(target) != target:
            raise RuntimeError("the id resolved to another workflow")

    yield {
        PREFIX: lambda: _timed(data.loop, prefix()),
        EXACT: lambda: _timed(data.loop, exact()),
    }


def _benchmarks(env: Env) -> list[Benchmark]:
    count = env.size(10_000, 1_000)
    return [
        Benchmark(
            name=f"list a page of {PAGE} among {count:,} session views",
            unit="ms",
            better="lower",
            subject=BATCHED,
            baselines=(KEY_BY_KEY,),
            contenders=_list_contenders,
            target=Target("<=", baseline=KEY_BY_KEY, factor=0.25),
            rounds=5,
            note=(
                f"{count:,} views of 3 steps each; a filter by tenant and status, newest "
                "first; the whole bucket is read either way (the filter and the order need "
                "every view)."
            ),
        ),
        Benchmark(
            name=f"resolve an id prefix among {count:,} workflows",
            unit="ms",
            better="lower",
            subject=PREFIX,
            baselines=(EXACT,),
            contenders=_resolve_contenders,
            target=Target("<", value=250.0),
            rounds=7,
            note="The prefix is 10 characters of a UUID; STREAM.INFO lists the subjects.",
        ),
    ]


SUITE = Suite(
    name="listing",
    title="Finding workflows: list and id prefixes",
    description=__doc__ or "",
    benchmarks=_benchmarks,
)
