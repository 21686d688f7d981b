"""The leader's JSON API checked against its own OpenAPI document (``/openapi.json``) with
schemathesis: every operation, with generated parameters and bodies (valid and invalid),
its answers checked by schemathesis's default checks (no server error, a documented status
and content type, a body that matches the documented schema, 401 without the token,
405 for a method the path does not take, ...); then the answers about jobs, dead letters
and groups that exist (which generated ids rarely hit), checked the same way.

The leader runs in a thread of its own (its own Trio loop), with users: schemathesis calls
it over loopback HTTP with an admin's token, as a person's tools would. The generated run
is bounded (a few examples per operation) to keep the module well under a minute.

The tests are generated from the document :func:`openapi_document` builds, at import
(schemathesis's lazy loading from a fixture does not run under pytest 9), and the first
test checks that the leader serves exactly that document."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
import trio
from hypothesis import HealthCheck, settings

from actors import AuthConfig, Client, Leader, User, Worker
from actors.leader._api import openapi_document
from actors.worker import Job, WorkerRunner
from runtime import Backoff

ADMIN = "schema-admin-token-0123456789abc"
SERVER = "schema-server-token-0123456789ab"
HEADERS = {"Authorization": f"Bearer {ADMIN}"}
NAME = "schema"
DOCUMENT = openapi_document(secured=True, name=NAME)
# (the admin's token, for the bearer scheme the document declares: schemathesis leaves it out
# itself in the cases that check that the API asks for one)
schema = schemathesis.openapi.from_dict(
    DOCUMENT,
    config=schemathesis.Config.from_dict({"auth": {"openapi": {"bearer": {"bearer": ADMIN}}}}),
)


class Answers(Worker):
    """Fails ``{"fail": true}``, holds ``{"hold": true}`` until the leader stops, else
    returns the payload."""

    subjects = ["schema.*"]
    concurrency = 8

    async def handle(self, job: Job) -> Any:
        if isinstance(job.payload, dict) and job.payload.get("fail"):
            raise ValueError("asked to fail")
        if isinstance(job.payload, dict) and job.payload.get("hold"):
            await trio.sleep_forever()
        return job.payload


class Scaler:
    """Keeps the counts of two groups, as a cluster's scaler would."""

    def __init__(self) -> None:
        self.counts = {"answers": 1, "spare": 0}

    async def __call__(self, group: str, instances: int) -> int:
        if group not in self.counts:
            raise LookupError(group)
        self.counts[group] = instances
        return instances

    def groups(self) -> dict[str, int]:
        return dict(self.counts)


async def _populate(leader: Leader, nursery: trio.Nursery) -> None:
    """A worker, and jobs in every state the API shows."""
    runner = WorkerRunner(Answers(), leader.urls[0], name="a0", group="answers", token=SERVER)
    await nursery.start(runner.run)
    async with Client.connect(leader.urls[0], token=ADMIN) as client:
        await client.submit("schema.x", {"v": [1, 2.5, "é", None]}, job_id="done", timeout=10)
        await client.submit("schema.x", b"\x00\x01", job_id="bytes", timeout=10)
        for job_id in ("dead", "dead-2"):
            try:
                await client.submit(
                    "schema.x", {"fail": True}, job_id=job_id, max_attempts=1, timeout=10
                )
            except Exception:  # (noqa: BLE001) DeadLettered: what it is for
                pass
        await client.enqueue("schema.x", {"hold": True}, job_id="running")
        await client.enqueue("nobody.serves", 1, job_id="queued", wait_for_worker=True)


@pytest.fixture(scope="module")
def leader_url() -> Iterator[str]:
    """A leader with users, a worker and some jobs, served in a thread; its HTTP URL."""
    started = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            leader = Leader(
                listen=["tcp://127.0.0.1:0"],
                http="127.0.0.1:0",
                name=NAME,
                memory=True,
                retry_backoff=Backoff(base=0.01, factor=2.0, cap=0.05, jitter=0.0),
                auth=AuthConfig(
                    users=(
                        User(name="ops", tokens=(ADMIN,), admin=True, submit=[">"]),
                        User(name="server", tokens=(SERVER,), serve=["schema.>"]),
                    )
                ),
            )
            await nursery.start(leader.run)
            leader.scaler = Scaler()
            await _populate(leader, nursery)
            box.update(leader=leader, token=trio.lowlevel.current_trio_token())
            box["stop"] = nursery.cancel_scope.cancel
            started.set()

    def run() -> None:
        try:
            trio.run(serve)
        finally:
            started.set()

    thread = threading.Thread(target=run, name="schema-leader", daemon=True)
    thread.start()
    assert started.wait(30), "the leader did not start"
    assert "leader" in box, "the leader failed to start"
    yield box["leader"].http_url
    trio.from_thread.run_sync(box["stop"], trio_token=box["token"])
    thread.join(10)


def test_the_leader_serves_this_document(leader_url: str) -> None:
    served = schemathesis.openapi.from_url(f"{leader_url}/openapi.json", headers=HEADERS)
    assert served.raw_schema == DOCUMENT


KNOWN = [
    ("GET", "/api/jobs/{job_id}", {"job_id": "done"}, None, None),
    ("GET", "/api/jobs/{job_id}", {"job_id": "bytes"}, None, None),
    ("GET", "/api/jobs/{job_id}", {"job_id": "dead"}, None, None),
    ("GET", "/api/jobs/{job_id}", {"job_id": "running"}, None, None),
    ("GET", "/api/jobs/{job_id}", {"job_id": "queued"}, None, None),
    ("GET", "/api/workers", {}, {"state": "online", "limit": 5}, None),
    ("GET", "/api/groups", {}, None, None),
    ("GET", "/api/stats", {}, None, None),
    ("GET", "/api/dead-letters", {}, {"limit": 1, "subject": "schema.x"}, None),
    ("GET", "/api/dead-letters/{job_id}", {"job_id": "dead"}, None, None),
    ("POST", "/api/dead-letters/{job_id}/retry", {"job_id": "dead-2"}, None, None),
    ("DELETE", "/api/dead-letters/{job_id}", {"job_id": "dead"}, None, None),
    ("POST", "/api/jobs/{job_id}/cancel", {"job_id": "running"}, None, {"reason": "test"}),
    ("POST", "/api/jobs/{job_id}/cancel", {"job_id": "queued"}, None, {}),
    ("PUT", "/api/groups/{name}", {"name": "spare"}, None, {"instances": 2}),
    ("POST", "/api/dead-letters/retry", {}, None, None),
    ("DELETE", "/api/dead-letters", {}, None, None),
]


def test_answers_about_what_exists_match_the_document(leader_url: str) -> None:
    for method, path, params, query, body in KNOWN:
        operation = schema[path][method]
        case = operation.Case(
            path_parameters=params,
            query=query,
            **({} if body is None else {"body": body, "media_type": "application/json"}),
        )
        # (explicit cases get no generated auth: the token is given)
        response = case.call_and_validate(base_url=leader_url, headers=HEADERS, timeout=10)
        assert response.status_code == 200, (method, path, params, response.text[:300])


@schema.parametrize()
@settings(max_examples=25, suppress_health_check=list(HealthCheck))
def test_the_api_answers_as_its_document_says(case: Any, leader_url: str) -> None:
    case.call_and_validate(base_url=leader_url, timeout=10)
