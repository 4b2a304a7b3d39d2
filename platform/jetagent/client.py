"""The client SDK: submit requests and follow their workflows.
(A little over 400 lines: the one ``Client`` class and the reading of a workflow's events
and results it follows them with; how a workflow ended is ``jetagent.outcomes``.)

Every error it raises is a ``jetagent.errors.JetagentError``: nats-py and pydantic errors
are translated here, at its edge (``jetagent._translate``).

Submission is separate from retrieval (the seed article's contract): ``submit()``
returns the workflow id at once; ``result()``, ``watch()`` and ``session()`` give the
outcome. Everything about a request appears under ``<prefix>.wf.<request_id>.>``.

``SyncClient`` (``jetagent._sync_client``) is the same API for code without an event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from opentelemetry.trace import SpanKind

from jetagent import correlation, telemetry
from jetagent._translate import check_nats_url, nats_errors, translate
from jetagent.config import Settings
from jetagent.contract import WorkflowRequest
from jetagent.decoding import is_token, shown
from jetagent.errors import (
    ConfigError,
    InvalidRequestError,
    JetagentError,
    NotProvisionedError,
    RequestRejectedError,
    WorkflowNotFoundError,
    WorkflowTimeoutError,
)
from jetagent.events import (
    Cancelled,
    CancelRequested,
    Finalized,
    RequestRejected,
    SignalSent,
    StepResult,
    Terminated,
    WorkflowEvent,
    decode_events,
    decode_step_result,
    encode,
)
from jetagent.jetstream import Message, publish
from jetagent.jetstream.headers import Header
from jetagent.outcomes import WorkflowResult, result_of
from jetagent.result_check import subject_problem
from jetagent.sessions import SessionView, apply_step_result, apply_workflow_message

if TYPE_CHECKING:
    from jetagent.jetstream import DirectGetter
    from jetagent.token_stream import TokenDelta

__all__ = ["Client", "SessionView", "WorkflowResult"]

T = TypeVar("T")
_FINAL = (Finalized, Terminated, Cancelled, RequestRejected)


def _token(value: str, what: str = "workflow id") -> str:
    """``value`` if it can be a subject token, else ``InvalidRequestError``: an id goes
    into subjects and keys, where a space or a wildcard is the caller's mistake (and
    ``*`` would follow every workflow), never an unreachable server."""
    if not is_token(value):
        raise InvalidRequestError(
            [f"{what} {shown(value)} is not valid: 1-64 letters, digits, '-' or '_'"]
        )
    return value


def _readable_events(data: bytes) -> list[WorkflowEvent]:
    """A message's events; none for junk a rogue publisher appended (the orchestrator
    skips it too and records it as a dead letter)."""
    try:
        return decode_events(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return []


def _readable_result(subject: str, data: bytes, *, prefix: str) -> StepResult | None:
    """A step result, unless it is junk or not on its own step's subject (a forgery)."""
    try:
        result = decode_step_result(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return result if subject_problem(subject, result, prefix=prefix) is None else None


def _ended(event: WorkflowEvent) -> WorkflowResult | None:
    """The result of a final event; a rejection raises ``RequestRejectedError``."""
    if isinstance(event, RequestRejected):
        raise RequestRejectedError(event.workflow_id, list(event.reasons))
    return result_of(event)


class Client:
    """An async jetagent client over one NATS connection."""

    def __init__(self, nc: NATS, settings: Settings | None = None) -> None:
        self.nc = nc
        self.settings = settings or Settings()
        self.names = self.settings.names
        self.js = nc.jetstream()
        self._readers: dict[str, DirectGetter] = {}

    @classmethod
    async def connect(cls, url: str | None = None, *, settings: Settings | None = None) -> Client:
        """Connect to NATS: ``url``, else ``NATS_URL``, else the server of a running
        ``jetagent up`` (the URL it announces: ``jetagent.discovery``)."""
        from jetagent.discovery import discover
        from jetagent.jetstream import connect

        settings = settings or Settings()
        target = url or settings.nats_url
        if not target:
            running = discover(settings.data_dir)
            if running is None:
                raise ConfigError(
                    "no NATS URL: pass one, set NATS_URL, or start `jetagent up` (found "
                    "through its data folder's nats.url while it runs)"
                )
            target = running.url
        check_nats_url(target)
        nc = await connect(
            target,
            name="jetagent.client",
            creds=settings.nats_creds,
            user=settings.nats_user,
            password=settings.nats_password(),
            **settings.connection_options(),
        )
        return cls(nc, settings)

    async def close(self) -> None:
        """Close the connection (also when the server is gone: closing cannot fail)."""
        for reader in self._readers.values():
            await reader.close()
        self._readers.clear()
        if not self.nc.is_closed:
            # nats-py first flushes what waits for a server that is gone, and raises its
            # transport's error (ConnectionResetError); the connection is closed all the same.
            with contextlib.suppress(NatsError, OSError):
                await self.nc.close()

    async def _reader(self, stream: str) -> DirectGetter:
        """A direct-get reader of ``stream``, opened once and kept (one inbox each)."""
        from jetagent.jetstream import DirectGetter

        reader = self._readers.get(stream)
        if reader is None:
            with nats_errors(prefix=self.names.prefix):
                await self.js.stream_info(stream)  # a missing stream, said as such
                reader = DirectGetter(self.nc, stream, timeout=5.0)
                await reader.open()
            self._readers[stream] = reader
        return reader

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def submit(
        self,
        request: WorkflowRequest | None = None,
        /,
        *,
        instruction: str | None = None,
        tenant: str = "default",
        **fields: Any,
    ) -> str:
        """Publish a request and return its workflow id at once: once it returns, the
        request is stored (acknowledged) and will run.

        Publishing the same ``request_id`` again starts no second workflow, so the
        publish is sent again, with the same id, while the requests stream elects a
        leader or the connection moves to another node (up to 30 s).
        """
        with nats_errors(prefix=self.names.prefix):
            if request is None:
                if instruction is None:
                    raise InvalidRequestError(
                        ["submit() needs a WorkflowRequest or an instruction"]
                    )
                request = WorkflowRequest(instruction=instruction, tenant=tenant, **fields)
            return await self._publish_request(request)

    async def _publish_request(self, request: WorkflowRequest) -> str:
        body = request.model_dump_json(exclude_none=True).encode()
        # The span is a child of the caller's current span (its trace goes on through the
        # workflow), with the workflow's ids (jetagent.telemetry, jetagent.correlation).
        with (
            correlation.correlate(workflow_id=request.request_id, tenant=request.tenant),
            telemetry.span("jetagent submit", kind=SpanKind.PRODUCER),
        ):
            headers = telemetry.inject({Header.MSG_ID: request.request_id})
            await publish(
                self.nc,
                Message(self.names.request(request.tenant), body, headers),
                timeout=2.0,
                deadline_s=30.0,
                what=f"submit request {request.request_id}",
                no_leader=self._requests_stream_exists,
            )
        return request.request_id

    async def _requests_stream_exists(self) -> None:
        """Raise ``NotProvisionedError`` if the requests stream does not exist; return
        if it does, or if that cannot be known now (the cluster is electing)."""
        try:
            await self.js.stream_info(self.names.requests_stream)
        except NotFoundError as exc:
            raise translate(exc, prefix=self.names.prefix) or exc from exc
        except (NatsError, TimeoutError):
            return

    async def watch(self, workflow_id: str) -> AsyncGenerator[WorkflowEvent, None]:
        """Every event of a workflow, from its first, as they happen; ends after the last."""
        _token(workflow_id)
        with nats_errors(prefix=self.names.prefix):
            sub = await self.js.subscribe(
                self.names.workflow(workflow_id),
                stream=self.names.workflows_stream,
                ordered_consumer=True,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
            )
        try:
            while True:
                with nats_errors(prefix=self.names.prefix):
                    msg = await sub.next_msg(timeout=None)
                for event in _readable_events(msg.data):
                    yield event
                    if isinstance(event, _FINAL):
                        return
        finally:
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()
            # nats-py leaves the ordered consumer on the server until its inactivity
            # threshold; thousands of quick watches would reach the server's consumer
            # limit per stream ("maximum consumers limit reached", found by `make soak`).
            consumer = getattr(sub, "_consumer", None)
            if consumer:
                with contextlib.suppress(NatsError, TimeoutError):
                    await self.js.delete_consumer(self.names.workflows_stream, consumer)

    async def stream(self, workflow_id: str) -> AsyncGenerator[TokenDelta, None]:
        """The model's text as the workflow's reasoning steps produce it (``TokenDelta``s
        on core NATS, from now on), until the workflow ends. Not part of the record: a
        restart delta means another call's answer replaces what was shown."""
        from jetagent.token_stream import stream_workflow

        _token(workflow_id)
        with nats_errors(prefix=self.names.prefix):
            async with contextlib.aclosing(stream_workflow(self, workflow_id)) as deltas:
                async for delta in deltas:
                    yield delta

    async def result(self, workflow_id: str, timeout: float | None = 60.0) -> WorkflowResult:
        """Wait for the workflow's end. Raises ``RequestRejectedError`` for a rejected request
        and ``WorkflowTimeoutError`` (a ``TimeoutError``) if it has not ended within
        ``timeout`` seconds."""
        last = await self._last_event(_token(workflow_id))
        if last is not None and (ended := _ended(last)) is not None:
            return ended  # already ended: one direct get, no consumer
        # aclosing: the watch's consumer is removed now, not when the generator is collected.
        try:
            async with (
                asyncio.timeout(timeout),
                contextlib.aclosing(self.watch(workflow_id)) as events,
            ):
                async for event in events:
                    if (ended := _ended(event)) is not None:
                        return ended
        except TimeoutError as exc:
            if isinstance(exc, WorkflowTimeoutError):
                raise
            raise WorkflowTimeoutError(workflow_id, timeout) from None
        raise RuntimeError("the event stream ended without a final event")  # pragma: no cover

    async def cancel(self, workflow_id: str, *, reason: str = "", by: str = "") -> None:
        """Ask for the workflow to be cancelled (recorded as ``Cancelled``)."""
        event = CancelRequested(workflow_id=_token(workflow_id), reason=reason, by=by)
        with nats_errors(prefix=self.names.prefix):
            await self.js.publish(self.names.cancel(workflow_id), encode(event))

    async def signal(
        self, workflow_id: str, name: str, payload: dict[str, Any] | None = None, *, by: str = ""
    ) -> None:
        """Send a named signal (``approval`` resolves an ``ApprovalRequested``)."""
        _token(workflow_id)
        _token(name, "signal name")
        event = SignalSent(workflow_id=workflow_id, name=name, payload=payload or {}, by=by)
        with nats_errors(prefix=self.names.prefix):
            await self.js.publish(self.names.signal(workflow_id, name), encode(event))

    async def approve(
        self,
        workflow_id: str,
        step_id: str,
        *,
        approved: bool = True,
        comment: str = "",
        by: str = "",
    ) -> None:
        """Approve (or deny) a tool call waiting in ``ApprovalRequested``."""
        payload = {"step_id": step_id, "approved": approved, "comment": comment}
        await self.signal(workflow_id, "approval", payload, by=by)

    async def resolve(self, text: str) -> str:
        """The id of the one workflow ``text`` names: its id, or a unique prefix of it.

        Raises ``AmbiguousWorkflowIdError`` (naming the candidates) when several ids start
        with ``text`` and ``WorkflowNotFoundError`` when none does (``jetagent.ids``)."""
        from jetagent.ids import ID_TOKEN, ids_starting_with, pick

        if not ID_TOKEN.fullmatch(text):
            raise WorkflowNotFoundError(text)  # not even a subject token: no workflow
        reader = await self._reader(self.names.workflows_stream)
        if await reader.last(self.names.workflow(text)) is not None:
            return text  # an id as it is (also when longer ids start with it)
        return pick(text, await ids_starting_with(self.nc, self.names, text))

    async def _last_event(self, workflow_id: str) -> WorkflowEvent | None:
        reader = await self._reader(self.names.workflows_stream)
        record = await reader.last(self.names.workflow(workflow_id))
        events = _readable_events(record.data) if record is not None else []
        return events[-1] if events else None

    async def events(self, workflow_id: str) -> list[WorkflowEvent]:
        """The workflow's events so far (no waiting): up to the newest its stream's
        leader knows of, not what a replica that is behind has."""
        _token(workflow_id)
        records = await self._scan(self.names.workflows_stream, self.names.workflow(workflow_id))
        return [event for r in records for event in _readable_events(r.data)]

    async def step_results(self, workflow_id: str) -> list[StepResult]:
        """Every step's result so far (up to the newest the stream's leader knows of):
        its output or error, each provider call with its usage and cost, and the routing
        decisions (which model answered, and why)."""
        subject = self.names.step_results(_token(workflow_id))
        records = await self._scan(self.names.steps_stream, subject)
        prefix = self.names.prefix
        results = (_readable_result(r.subject, r.data, prefix=prefix) for r in records)
        return [result for result in results if result is not None]

    async def _scan(self, stream: str, subject: str) -> list[Any]:
        # Any replica answers a direct get, and one that is behind answers with less
        # (docs/ARCHITECTURE.md §5.8): read up to the leader's newest. While the stream
        # elects a leader nobody can say what that is; then a replica's answer it is.
        reader = await self._reader(stream)
        try:
            newest = await reader.leader_last(subject)
        except JetagentError:  # no leader now
            newest = None
        return await reader.scan(subject, need=newest.seq if newest is not None else 0)

    async def session(self, workflow_id: str) -> SessionView:
        """The workflow's session view: status, each step with its model, attempt,
        latency, tokens and cost, the output or error.

        Read from the ``JA_SESSIONS`` bucket that the projection service maintains; a
        workflow it has not reached yet is folded here from its events.
        """
        from nats.js.errors import NotFoundError

        _token(workflow_id)
        try:
            with nats_errors(prefix=self.names.prefix):
                kv = await self.js.key_value(self.names.bucket("SESSIONS"))
                try:
                    entry = await kv.get(workflow_id)
                except NotFoundError:  # KeyNotFoundError, KeyDeletedError among them
                    entry = None  # the projection has not reached it (yet)
        except NotProvisionedError:
            entry = None  # no projection bucket: fold the view from the streams
        if entry is not None and entry.value:
            # An unreadable view (another version's, a rogue writer's) is folded anew.
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                return msgspec.json.decode(entry.value, type=SessionView)
        return await self.fold_session(workflow_id)

    async def fold_session(self, workflow_id: str) -> SessionView:
        """The session view computed from the streams now (no projection involved)."""
        _token(workflow_id)
        view = SessionView(workflow_id=workflow_id)
        for record in await self._scan(
            self.names.workflows_stream, self.names.workflow(workflow_id)
        ):
            if events := _readable_events(record.data):
                apply_workflow_message(view, events, record.seq)
        subject = self.names.step_results(workflow_id)
        for record in await self._scan(self.names.steps_stream, subject):
            result = _readable_result(record.subject, record.data, prefix=self.names.prefix)
            if result is not None:
                apply_step_result(view, result, record.seq)
        return view
