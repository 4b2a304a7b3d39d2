"""The eventsourcing library's own recorder conformance cases, run on jetagent.store.

Each case gets a stream of its own on the session's real nats-server.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    InfrastructureFactory,
    ProcessRecorder,
    TrackingRecorder,
)

# Imported as modules: pytest would collect the abstract base cases from this namespace.
from eventsourcing.tests import application as es_application
from eventsourcing.tests import persistence as es_persistence
from eventsourcing.utils import Environment

from jetagent.embedded import EmbeddedServer
from jetagent.store import (
    NatsAggregateRecorder,
    NatsApplicationRecorder,
    NatsFactory,
    NatsProcessRecorder,
    NatsTrackingRecorder,
)


@pytest.fixture(autouse=True)
def _server_url(request: pytest.FixtureRequest, nats_server: EmbeddedServer) -> None:
    if request.instance is not None:
        request.instance.nats_url = nats_server.url


class _OwnStream:
    """Gives each test case a factory on a stream of its own."""

    nats_url: str

    def setUp(self) -> None:
        self.stream = "CONF_" + uuid.uuid4().hex[:12]
        self.factory = NatsFactory(
            Environment(
                name="Conformance", env={"NATS_URL": self.nats_url, "NATS_STREAM": self.stream}
            )
        )
        super().setUp()  # type: ignore[misc]

    def tearDown(self) -> None:
        super().tearDown()  # type: ignore[misc]
        self.factory.close()


class TestAggregateRecorder(_OwnStream, es_persistence.AggregateRecorderTestCase):
    def create_recorder(self) -> AggregateRecorder:
        return self.factory.aggregate_recorder()


class TestSnapshotRecorder(_OwnStream, es_persistence.AggregateRecorderTestCase):
    def create_recorder(self) -> AggregateRecorder:
        return self.factory.aggregate_recorder(purpose="snapshots")


class TestApplicationRecorder(_OwnStream, es_persistence.ApplicationRecorderTestCase):
    def create_recorder(self) -> ApplicationRecorder:
        return self.factory.application_recorder()

    def test_insert_subscribe(self) -> None:
        self.optional_test_insert_subscribe()


class TestTrackingRecorder(_OwnStream, es_persistence.TrackingRecorderTestCase):
    def create_recorder(self) -> TrackingRecorder:
        return self.factory.tracking_recorder()


class TestProcessRecorder(_OwnStream, es_persistence.ProcessRecorderTestCase):
    def create_recorder(self) -> ProcessRecorder:
        return self.factory.process_recorder()


class TestNonInterleavingNotificationIDs(
    _OwnStream, es_persistence.NonInterleavingNotificationIDsBaseCase
):
    def create_recorder(self) -> ApplicationRecorder:
        return self.factory.application_recorder()


class MyTrackingRecorder(NatsTrackingRecorder):
    """A user's subclass, which the factory must be able to construct."""


class TestInfrastructureFactory(es_persistence.InfrastructureFactoryTestCase[NatsFactory]):
    nats_url: str

    def setUp(self) -> None:
        self.env = Environment(
            "TestCase",
            {
                InfrastructureFactory.PERSISTENCE_MODULE: "jetagent.store",
                "NATS_URL": self.nats_url,
                "NATS_STREAM": "FACTORY_" + uuid.uuid4().hex[:12],
            },
        )
        super().setUp()

    def expected_factory_class(self) -> type[NatsFactory]:
        return NatsFactory

    def expected_aggregate_recorder_class(self) -> type[AggregateRecorder]:
        return NatsAggregateRecorder

    def expected_application_recorder_class(self) -> type[ApplicationRecorder]:
        return NatsApplicationRecorder

    def expected_tracking_recorder_class(self) -> type[TrackingRecorder]:
        return NatsTrackingRecorder

    def tracking_recorder_subclass(self) -> type[TrackingRecorder]:
        return MyTrackingRecorder

    def expected_process_recorder_class(self) -> type[ProcessRecorder]:
        return NatsProcessRecorder


class TestExampleApplication(es_application.ExampleApplicationTestCase):
    """The library's example application (bank accounts, snapshots) on jetagent.store."""

    nats_url: str
    expected_factory_topic = "jetagent.store:NatsFactory"

    def setUp(self) -> None:
        self._saved: dict[str, Any] = {}
        overrides = {
            "PERSISTENCE_MODULE": "jetagent.store",
            "NATS_URL": self.nats_url,
            "BANKACCOUNTS_NATS_STREAM": "BANK_" + uuid.uuid4().hex[:12],
        }
        for key, value in overrides.items():
            self._saved[key] = os.environ.get(key)
            os.environ[key] = value
        super().setUp()

    def tearDown(self) -> None:
        super().tearDown()
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
