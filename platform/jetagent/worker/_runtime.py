"""The worker runtime: capability handlers served on their own durable consumers.

A capability is a typed async handler registered by name::

    @capability("tools")
    async def run_tool(step: StepContext) -> StepOutput: ...

For each capability the runtime keeps one durable pull consumer (``cap-<name>``) on the
capability's ``StepScheduled`` subjects, shared by every replica, and runs up to
``concurrency`` steps at once. The consumer's ack wait is ``step_ack_wait_s`` and it has
no ``backoff`` (which would replace the ack wait); while a step runs the runtime sends
in-progress acks at a quarter of the ack wait, so a step whose worker lives is never
given to another worker, and one whose worker died runs again after the ack wait.

Retries come from a :class:`~jetagent.worker.retry.RetryPolicy` (count, time, the workflow's
deadline); what a handler's outcome becomes — ``nak(delay)``, a failed ``StepResult``, a
``JA_DLQ`` entry, ``term`` — is decided by :mod:`jetagent.worker._policy` and carried out
by :mod:`jetagent.worker._steps`. The server redelivers without limit and the runtime
counts: a delivery past ``step_max_deliver`` (the runs before it all died) is finished as
failed without running the handler, so dead-lettering needs no advisory and no worker
present at the moment deliveries run out.

``StepResult`` is write-once per step (expected last subject sequence 0,
:mod:`jetagent.worker._results`): a redelivered step whose result exists is simply
acknowledged. SIGTERM stops fetching and lets running steps finish (``shutdown_grace_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
from collections.abc import Sequence
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from opentelemetry.trace import SpanKind

from jetagent import correlation, telemetry
from jetagent.config import Settings
from jetagent.jetstream import DirectGetter, Header, Settler
from jetagent.jetstream.consume import Puller
from jetagent.jetstream.fair import FairFeed
from jetagent.jetstream.provision import consumer_config, ensure_consumer, provision
from jetagent.logs import seconds
from jetagent.payloads import PayloadStore
from jetagent.reports import WorkerReport, identity, keep_reporting, worker_key
from jetagent.worker._context import CapabilitySpec, StepServices
from jetagent.worker._metrics import WorkerMetrics
from jetagent.worker._results import StepRecords
from jetagent.worker._steps import StepRunner
from jetagent.worker.calls import CallJournal
from jetagent.worker.registry import ToolRegistry
from jetagent.worker.retry import RetryPolicy

__all__ = ["Worker"]

log = logging.getLogger("jetagent.worker")

_UNHANDLED_DELAY_S = 2.0
"""Delay before a message the runtime itself failed on (a bug) is delivered again."""


def _tenant(msg: Msg) -> str:
    """The tenant of a step (its message's ``Ja-Tenant``; "" before that header existed)."""
    return (msg.headers or {}).get(Header.JA_TENANT, "")


class Worker:
    """Serves one or more capabilities until stopped."""

    def __init__(
        self,
        nc: NATS,
        settings: Settings,
        specs: Sequence[CapabilitySpec],
        *,
        worker_id: str | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        """``metrics``: this worker's own (default: new ones, for ``specs``)."""
        self.nc = nc
        self.settings = settings
        self.names = settings.names
        self.specs = list(specs)
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.js = nc.jetstream()
        payloads = PayloadStore(
            self.js,
            bucket=self.names.bucket("PAYLOADS"),
            threshold=settings.payload_threshold_bytes,
        )
        self.retry = RetryPolicy.from_settings(settings)
        self._results = DirectGetter(nc, self.names.steps_stream, timeout=5.0)
        self._calls = DirectGetter(nc, self.names.calls_stream, timeout=5.0)
        self.settler = Settler(nc)
        journal = CallJournal(nc, self._calls, self.names, worker=self.worker_id)
        if metrics is None:
            metrics = WorkerMetrics(spec.name for spec in self.specs)
        self.metrics = metrics
        """This process's own metrics (``jetagent worker`` serves them on /metrics)."""
        self._steps = StepRunner(
            settings=settings,
            services=StepServices(
                names=self.names,
                nc=nc,
                js=self.js,
                payloads=payloads,
                journal=journal,
                metrics=self.metrics,
            ),
            metrics=self.metrics,
            records=StepRecords(nc, self.js, self.names, self._results),
            journal=journal,
            settler=self.settler,
            worker_id=self.worker_id,
            retry=self.retry,
            # A tool's own retry budget (its registration) replaces the global one for its steps.
            retry_of={
                (spec.name, registered.spec.name): self.retry.for_tool(registered)
                for spec in self.specs
                for registered in spec.tools
            },
        )

    @property
    def completed(self) -> int:
        """Deliveries answered with a result of this process (completed or failed)."""
        return self._steps.completed

    def _consumer_name(self, spec: CapabilitySpec) -> str:
        return spec.consumer or f"cap-{spec.name}"

    def consumer_config(self, spec: CapabilitySpec) -> dict[str, Any]:
        """The durable consumer of ``spec``: the settings' ack wait, no backoff (it would
        replace the ack wait), and no server-side delivery limit (the runtime counts
        deliveries itself and fails the one past the last run, see
        :meth:`~jetagent.worker._policy.StepPolicy.exhausted`)."""
        config = consumer_config(self.settings, "capability", capability=spec.name)
        config["durable_name"] = self._consumer_name(spec)
        subjects = spec.subjects or self.names.step_scheduled(spec.name)
        config["filter_subjects"] = [self.names.fill(s) for s in subjects]
        config["ack_wait"] = int(self.settings.step_ack_wait_s * 1e9)
        config["max_deliver"] = -1
        config.pop("backoff", None)
        return config

    async def setup(self) -> None:
        """Provision, create or update the consumers and announce the tools (idempotent;
        a consumer provisioned with a ``backoff`` by an older release loses it here)."""
        await provision(self.nc, self.settings, consumers=False)
        registry = ToolRegistry(self.js, self.names, nc=self.nc)
        for spec in self.specs:
            await ensure_consumer(self.nc, self.consumer_config(spec))
            for tool in spec.tools:
                await registry.publish(tool)
        await self._results.open()
        await self._calls.open()
        await self.settler.start()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve every capability until ``stop`` is set; then let running steps finish
        (``shutdown_grace_s``) and release what the capabilities hold."""
        await self.setup()
        async with asyncio.TaskGroup() as tasks:
            for spec in self.specs:
                tasks.create_task(self._serve(spec, stop))
            tasks.create_task(self._report(stop))
        # The last acks and naks are confirmed before the connection goes.
        await self.settler.close(timeout=5.0)
        await self._results.close()
        await self._calls.close()
        for close in dict.fromkeys(s.close for s in self.specs if s.close):
            try:
                await close()
            except Exception:  # one resource failing to close must not keep the others
                log.exception("closing a capability's resources failed")

    async def _serve(self, spec: CapabilitySpec, stop: asyncio.Event) -> None:
        concurrency = spec.concurrency or self.settings.worker_concurrency
        lookahead = self.settings.worker_lookahead
        consumer = self._consumer_name(spec)
        puller = Puller(
            self.nc,
            stream=self.names.workflows_stream,
            consumer=consumer,
            # Steps held beyond those running are started round robin across tenants.
            max_in_flight=concurrency + lookahead,
        )
        await puller.start()
        log.info(
            "worker %s serving %s (consumer %s, concurrency %d, lookahead %d)",
            self.worker_id,
            spec.name,
            consumer,
            concurrency,
            lookahead,
        )
        running: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(concurrency)

        async def pull() -> None:
            # Waiting steps get in-progress acks like running ones (a quarter of the ack
            # wait), so none goes to another replica while this one lives.
            heartbeat = self.settings.step_ack_wait_s / 4
            async with FairFeed(puller, key=_tenant, heartbeat_s=heartbeat) as feed:
                while True:
                    await slots.acquire()
                    msg = await feed.next()
                    if msg is None:
                        slots.release()
                        return
                    task = asyncio.create_task(self._run_step(spec, msg, puller))
                    running.add(task)
                    task.add_done_callback(running.discard)
                    task.add_done_callback(lambda _: slots.release())

        pulling = asyncio.create_task(pull())
        try:
            await stop.wait()
        finally:
            await puller.stop()
            pulling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pulling
            if running:
                log.info(
                    "waiting up to %.0f s for %d running %s steps",
                    self.settings.shutdown_grace_s,
                    len(running),
                    spec.name,
                )
                _, late = await asyncio.wait(running, timeout=self.settings.shutdown_grace_s)
                for task in late:
                    task.cancel()  # its message is nak'd and redelivered elsewhere
                if late:
                    await asyncio.wait(late)

    async def _report(self, stop: asyncio.Event) -> None:
        """Report this worker in the registry bucket every few seconds (``jetagent
        status``, :mod:`jetagent.reports`): its presence per capability (deleted when it
        stops) and what a capability reports of itself (breaker states, served tools)."""
        bucket = self.names.bucket("REGISTRY")
        worker = re.sub(r"[^A-Za-z0-9_-]", "-", self.worker_id)
        started = time.time()
        me = identity()

        def presence() -> dict[str, Any]:
            now = time.time()
            return {
                worker_key(spec.name, self.worker_id): WorkerReport(
                    capability=spec.name,
                    worker=self.worker_id,
                    consumer=self._consumer_name(spec),
                    concurrency=spec.concurrency or self.settings.worker_concurrency,
                    started_at=started,
                    at=now,
                    **me,
                )
                for spec in self.specs
            }

        def statuses() -> dict[str, Any]:
            found = {}
            for spec in self.specs:
                if spec.report is None:
                    continue
                try:
                    status = {"at": time.time(), "worker": self.worker_id, **me, **spec.report()}
                except Exception as exc:  # a capability's report must not stop the worker
                    log.warning("could not report %s's status: %s", spec.name, exc)
                    continue
                found[f"status.{spec.name}.{worker}"] = status
            return found

        # Status reports stay when the worker stops: the registry ages a dedicated tool's
        # pool out by them (SERVED_FRESH_S), so a restart does not refuse its requests.
        await asyncio.gather(
            keep_reporting(self.js, bucket, presence, stop),
            keep_reporting(self.js, bucket, statuses, stop, last=dict),
        )

    # -------------------------------------------------------------------- steps

    async def _run_step(self, spec: CapabilitySpec, msg: Msg, puller: Puller) -> None:
        self.metrics.started(spec.name)
        # A scope for the step's ids (the runner adds the workflow, step, tool and tenant
        # once the message is read): on its spans and every log line about it.
        with correlation.correlate(capability=spec.name):
            try:
                with telemetry.span(
                    f"jetagent step {spec.name}", parent=msg.headers, kind=SpanKind.CONSUMER
                ):
                    await self._steps.run(spec, msg)
            except asyncio.CancelledError:
                await self.settler.nak(msg)
                raise
            except Exception:
                log.exception(
                    "step message %s could not be handled; delivered again in %s s",
                    msg.subject,
                    seconds(_UNHANDLED_DELAY_S),
                )
                await self.settler.nak(msg, delay=_UNHANDLED_DELAY_S)
            finally:
                self.metrics.finished(spec.name)
                await puller.done()
