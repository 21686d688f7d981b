"""The leader's JSON API over HTTP, and the OpenAPI document that describes it.

The leader adds these routes to its :class:`~actors.leader._http.HttpApp` (see
:func:`add_api_routes`); each calls an operation of :class:`~actors.leader._admin.LeaderAdmin`
(or the leader's ``stats`` and ``worker_list``):

====================================  ==================================================
``GET /api/stats``                    the leader's statistics (the 1,000 busiest subjects)
``GET /api/workers``                  a page of the workers: ``offset``, ``limit`` (at most
                                      1,000), ``group``, ``state``
``GET /api/jobs/{job_id}``            one job: state, attempts, worker, times, result or
                                      error (cut to 4 KiB)
``POST /api/jobs/{job_id}/cancel``    cancel it (optional body ``{"reason": ...}``)
``GET /api/dead-letters``             a page of dead letters, newest first: ``offset``,
                                      ``limit`` (at most 500), ``subject``
``DELETE /api/dead-letters``          purge them all
``POST /api/dead-letters/retry``      requeue them (10,000 at most per call: it says how
                                      many remain)
``GET /api/dead-letters/{job_id}``    one dead letter, with its payload and traceback
``DELETE /api/dead-letters/{job_id}`` purge it
``POST /api/dead-letters/{job_id}/retry``  requeue it
``GET /api/groups``                   a page of the worker groups: ``offset``, ``limit``
``PUT /api/groups/{name}``            ``{"instances": n}`` (0 to 1,000): a cluster's group
``GET /openapi.json``                 the OpenAPI 3.1 document of all this
====================================  ==================================================

Every answer is JSON; an error is ``{"error": code, "message": text}`` with its status
(400 bad parameters or body, or a ``Host`` that is not ``host[:port]``, 401 no or a wrong token, 403 not allowed, a foreign
``Origin`` or the read-only mode, 404 nothing there, 405 another method, 409 not in a
state that allows it, 413 a body over 16 KiB, 415 a body that is not JSON, 429 too many
journal queries at once, 503 the journal cannot be read or written; 431 and 500 as the
server's). A query parameter the route does not take, or given twice, is 400, and so is a
body sent to a route that takes none.

Who may do what: with users, every route needs ``Authorization: Bearer <token>`` of any
identity (401); dead letters and scaling are for admins (403); a job is seen and cancelled
by its owner or an admin (to others it does not exist: 404); where workers run (their
``host``, ``pid`` and ``peer`` address) is shown to admins only (null for the others).
Without users (the HTTP server is on loopback then), anyone may do anything, and sees
everything. ``http_read_only`` answers every
method but GET and HEAD 403 ``read_only``. The document served says so: it declares the
bearer scheme only when the leader has users.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from protocol import MAX_NAME_LENGTH, MAX_SUBJECT_LENGTH

from ._admin import MAX_INSTANCES, MAX_RETRY_ALL, AdminError, LeaderAdmin, is_admin, json_safe
from ._http import HttpApp, HttpError, Request, Response
from ._workers import MAX_LISTED_SUBJECTS, MAX_SUBJECT_CHARS, worker_list

if TYPE_CHECKING:
    from ._leader import Leader

#: Bytes of an API request's body at most (more: 413).
MAX_API_BODY = 16 * 1024
#: The largest ``offset`` a page may start at.
MAX_OFFSET = 1_000_000_000
#: Dead letters per page at most.
MAX_DEAD_LETTER_PAGE = 500
#: Workers and groups per page at most.
MAX_PAGE = 1000
#: Characters of a cancel's reason at most.
MAX_REASON = 1000
#: Query parameters one request may carry at most (more: 400).
MAX_QUERY_FIELDS = 16
#: The states a worker is in, as ``/api/workers?state=`` filters them.
WORKER_STATES = ("online", "stale", "offline")


def add_api_routes(app: HttpApp) -> None:
    """Serve the API (and ``/openapi.json``) on ``app``, for its leader."""
    api = Api(app.leader)
    routes: dict[str, dict[str, Callable[[Request], Awaitable[Response]]]] = {
        "/openapi.json": {"GET": api.openapi},
        "/api/stats": {"GET": api.stats},
        "/api/workers": {"GET": api.workers},
        "/api/jobs/{job_id}": {"GET": api.job},
        "/api/jobs/{job_id}/cancel": {"POST": api.cancel},
        "/api/dead-letters": {"GET": api.dead_letters, "DELETE": api.purge_dead_letters},
        "/api/dead-letters/retry": {"POST": api.retry_dead_letters},
        "/api/dead-letters/{job_id}": {"GET": api.dead_letter, "DELETE": api.purge_dead_letter},
        "/api/dead-letters/{job_id}/retry": {"POST": api.retry_dead_letter},
        "/api/groups": {"GET": api.groups},
        "/api/groups/{name}": {"PUT": api.scale},
    }
    for path, handlers in routes.items():
        app.add_route(path, handlers, authenticated=True)


def answer(status: int, value: Any) -> Response:
    """``value`` as a JSON response (not to be cached), strict JSON: what it cannot hold
    (NaN, bytes) made safe (see :func:`~actors.leader._admin.json_safe`)."""
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (ValueError, TypeError):
        text = json.dumps(json_safe(value)[0], separators=(",", ":"), ensure_ascii=False)
    return Response(status, text.encode(), "application/json", (("cache-control", "no-store"),))


# --------------------------------------------------------------------------- parameters


def query(request: Request, allowed: dict[str, Callable[[str, str], Any]]) -> dict[str, Any]:
    """The request's query parameters, each read by its ``allowed`` reader (which raises
    :class:`HttpError` for a bad value).

    Raises:
      HttpError: 400 for a query string that is not UTF-8 or has too many fields, a
        parameter the route does not take, or one given twice.
    """
    try:
        text = request.query_string.decode("utf-8")
        pairs = parse_qsl(
            text, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS, errors="strict"
        )
    except (UnicodeDecodeError, ValueError):
        raise _bad(f"a bad query string (UTF-8, at most {MAX_QUERY_FIELDS} fields)") from None
    values: dict[str, Any] = {}
    for name, value in pairs:
        reader = allowed.get(name)
        if reader is None:
            takes = ", ".join(allowed) or "none"
            raise _bad(f"unknown query parameter {name!r:.60} (this route takes: {takes})")
        if name in values:
            raise _bad(f"query parameter {name!r} given twice")
        values[name] = reader(name, value)
    return values


def integer(minimum: int, maximum: int) -> Callable[[str, str], int]:
    """A reader of a decimal integer from ``minimum`` to ``maximum``."""

    def read(name: str, text: str) -> int:
        if not (text.isascii() and text.isdigit() and len(text) <= 12):
            raise _bad(f"{name} must be an integer from {minimum} to {maximum}, not {text!r:.40}")
        value = int(text)
        if not minimum <= value <= maximum:
            raise _bad(f"{name} must be an integer from {minimum} to {maximum}, not {value}")
        return value

    return read


def string(max_length: int) -> Callable[[str, str], str]:
    """A reader of a non-empty string of at most ``max_length`` characters."""

    def read(name: str, text: str) -> str:
        if not 0 < len(text) <= max_length:
            raise _bad(f"{name} must have 1 to {max_length} characters")
        return text

    return read


def choice(*choices: str) -> Callable[[str, str], str]:
    """A reader of one of ``choices``."""

    def read(name: str, text: str) -> str:
        if text not in choices:
            raise _bad(f"{name} must be one of {', '.join(choices)}, not {text!r:.40}")
        return text

    return read


def path_name(request: Request, name: str) -> str:
    """The ``{name}`` segment of the request's path (1 to 256 characters).

    Raises:
      HttpError: 400 when it is longer.
    """
    value = request.params[name]
    if len(value) > MAX_NAME_LENGTH:
        raise _bad(f"{name} must have 1 to {MAX_NAME_LENGTH} characters")
    return value


async def json_body(request: Request, *, required: bool) -> dict[str, Any] | None:
    """The request's body: a JSON object (None when it is empty and not ``required``).

    Raises:
      HttpError: 400 for a body that is not a JSON object (or none when ``required``),
        415 for one not said to be ``application/json``.
      BodyTooLarge: over :data:`MAX_API_BODY` (answered 413).
    """
    body = await request.body(MAX_API_BODY)
    if not body.strip():
        if required:
            raise _bad("this route takes a JSON object as its body")
        return None
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "application/json":
        raise HttpError(
            415, "unsupported_media_type", "the body must be JSON (Content-Type: application/json)"
        )
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        raise _bad("the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise _bad("the body must be a JSON object")
    return value


async def no_body(request: Request) -> None:
    """Check that the request has no body (a route that takes none).

    Raises:
      HttpError: 400 when it has one.
      BodyTooLarge: over :data:`MAX_API_BODY` (answered 413).
    """
    if (await request.body(MAX_API_BODY)).strip():
        raise _bad("this route takes no body")


def _bad(message: str) -> HttpError:
    return HttpError(400, "bad_request", message)


def _admin_error(exc: AdminError) -> HttpError:
    headers: tuple[tuple[str, str], ...] = ()
    if exc.retry_after is not None:
        headers = (("retry-after", str(max(1, round(exc.retry_after)))),)
    return HttpError(exc.status, exc.code, exc.message, headers)


# --------------------------------------------------------------------------- handlers


class Api:
    """The API's handlers for one leader (see the module's text)."""

    def __init__(self, leader: Leader) -> None:
        self.leader = leader
        self.admin = LeaderAdmin(leader)
        self._documents: dict[bool, bytes] = {}

    async def openapi(self, request: Request) -> Response:
        """``GET /openapi.json``."""
        query(request, {})
        secured = self.leader.authenticator is not None
        body = self._documents.get(secured)
        if body is None:
            document = openapi_document(secured=secured, name=self.leader.name)
            body = self._documents[secured] = json.dumps(document, separators=(",", ":")).encode()
        return Response(200, body, "application/json", (("cache-control", "no-store"),))

    async def stats(self, request: Request) -> Response:
        """``GET /api/stats``."""
        query(request, {})
        return answer(200, self.admin.stats())

    async def workers(self, request: Request) -> Response:
        """``GET /api/workers``."""
        args = query(
            request,
            {
                "offset": integer(0, MAX_OFFSET),
                "limit": integer(0, MAX_PAGE),
                "group": string(MAX_NAME_LENGTH),
                "state": choice(*WORKER_STATES),
            },
        )
        # (where workers run, their hosts, pids and addresses, is for admins only)
        listing = worker_list(
            self.leader,
            **{"offset": 0, "limit": 100, **args},
            show_hosts=is_admin(request.principal),
        )
        return answer(200, listing)

    async def job(self, request: Request) -> Response:
        """``GET /api/jobs/{job_id}``."""
        query(request, {})
        job_id = path_name(request, "job_id")
        try:
            return answer(200, await self.admin.job(job_id, request.principal))
        except AdminError as exc:
            raise _admin_error(exc) from None

    async def cancel(self, request: Request) -> Response:
        """``POST /api/jobs/{job_id}/cancel``."""
        query(request, {})
        job_id = path_name(request, "job_id")
        body = await json_body(request, required=False) or {}
        unknown = set(body) - {"reason"}
        if unknown:
            raise _bad(f"unknown field {min(unknown)!r:.60} (the body takes: reason)")
        reason = body.get("reason")
        if reason is not None and not (
            isinstance(reason, str) and len(reason) <= MAX_REASON and _encodable(reason)
        ):
            raise _bad(f"reason must be a string of at most {MAX_REASON} characters")
        try:
            return answer(200, await self.admin.cancel(job_id, request.principal, reason))
        except AdminError as exc:
            raise _admin_error(exc) from None

    async def dead_letters(self, request: Request) -> Response:
        """``GET /api/dead-letters``."""
        args = query(
            request,
            {
                "offset": integer(0, MAX_OFFSET),
                "limit": integer(0, MAX_DEAD_LETTER_PAGE),
                "subject": string(MAX_SUBJECT_LENGTH),
            },
        )
        try:
            return answer(200, await self.admin.dead_letters(request.principal, **args))
        except AdminError as exc:
            raise _admin_error(exc) from None

    async def dead_letter(self, request: Request) -> Response:
        """``GET /api/dead-letters/{job_id}``."""
        query(request, {})
        job_id = path_name(request, "job_id")
        try:
            return answer(200, await self.admin.dead_letter(job_id, request.principal))
        except AdminError as exc:
            raise _admin_error(exc) from None

    async def retry_dead_letter(self, request: Request) -> Response:
        """``POST /api/dead-letters/{job_id}/retry``."""
        query(request, {})
        job_id = path_name(request, "job_id")
        await no_body(request)
        try:
            return answer(200, await self.admin.retry_dead_letter(job_id, request.principal))
        except AdminError as exc:
            raise _admin_error(exc) from None

    async def retry_dead_letters(self, request: Request) -> Response:
        """``POST /api/dead-letters/retry``."""
        query(request, {})
        await no_body(request)
        try:
            return answer(200, await self.admin.retry_all_dead_letters(request.principal))
        except AdminError as exc:
            raise _admin_error(exc) from None

    async def purge_dead_letter(self, request: Request) -> Response:
        """``DELETE /api/dead-letters/{job_id}``."""
        query(request, {})
        job_id = path_name(request, "job_id")
        await no_body(request)
        try:
            return answer(200, await self.admin.purge_dead_letter(job_id, request.principal))
        except AdminError as exc:
            raise _admin_error(exc) from None

    async def purge_dead_letters(self, request: Request) -> Response:
        """``DELETE /api/dead-letters``."""
        query(request, {})
        await no_body(request)
        try:
            return answer(200, await self.admin.purge_dead_letters(request.principal))
        except AdminError as exc:
            raise _admin_error(exc) from None

    async def groups(self, request: Request) -> Response:
        """``GET /api/groups``."""
        args = query(request, {"offset": integer(0, MAX_OFFSET), "limit": integer(0, MAX_PAGE)})
        return answer(200, self.admin.groups(**args))

    async def scale(self, request: Request) -> Response:
        """``PUT /api/groups/{name}``."""
        query(request, {})
        name = path_name(request, "name")
        body = await json_body(request, required=True)
        assert body is not None
        unknown = set(body) - {"instances"}
        if unknown:
            raise _bad(f"unknown field {min(unknown)!r:.60} (the body takes: instances)")
        instances = body.get("instances")
        if type(instances) is float and instances.is_integer():
            instances = int(instances)  # (JSON has numbers: 2.0 is the integer 2)
        if type(instances) is not int or not 0 <= instances <= MAX_INSTANCES:
            raise _bad(f"instances must be an integer from 0 to {MAX_INSTANCES}")
        try:
            return answer(200, await self.admin.scale(name, instances, request.principal))
        except AdminError as exc:
            raise _admin_error(exc) from None


def _encodable(text: str) -> bool:
    """Whether ``text`` is UTF-8 encodable (JSON's ``\\ud800`` escapes make strings that
    are not)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


# --------------------------------------------------------------------------- the document


def _nullable(kind: str | dict[str, Any], **more: Any) -> dict[str, Any]:
    if isinstance(kind, dict):
        return {"oneOf": [kind, {"type": "null"}], **more}
    return {"type": [kind, "null"], **more}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(required: dict[str, Any], *, closed: bool = True, **optional: Any) -> dict[str, Any]:
    """An object schema: ``required`` properties, more ``optional`` ones; ``closed``: no
    others."""
    schema: dict[str, Any] = {
        "type": "object",
        "required": list(required),
        "properties": {**required, **optional},
    }
    if closed:
        schema["additionalProperties"] = False
    return schema


_COUNT = {"type": "integer", "minimum": 0}
_TIME = _nullable("number", description="Unix time (seconds)")
_NAME = {"type": "string", "minLength": 1, "maxLength": MAX_NAME_LENGTH}

_SCHEMAS: dict[str, Any] = {
    "Error": _object(
        {
            "error": {"type": "string", "description": "the error's code"},
            "message": {"type": "string"},
        }
    ),
    "Stats": {
        "type": "object",
        "description": "The leader's statistics: counters per subject and per group, totals."
        " Subjects: the 1,000 busiest (subjects_omitted: how many more).",
        "required": [
            "node",
            "jobs_active",
            "waiting",
            "in_flight",
            "workers",
            "results_stored",
            "dead_letters",
            "retained",
            "subjects",
            "subjects_omitted",
            "groups",
            "connections",
            "journal",
            "listen",
        ],
        "properties": {
            "node": {"type": "string"},
            "jobs_active": _COUNT,
            "waiting": {"type": "integer"},
            "in_flight": _COUNT,
            "workers": _COUNT,
            "results_stored": _COUNT,
            "dead_letters": {
                **_COUNT,
                "description": "how many there are (with a journal: all it holds)",
            },
            "dead_letters_kept": {**_COUNT, "description": "of those, the newest kept in memory"},
            "retained": _COUNT,
            "connections": _COUNT,
            "subjects_omitted": _COUNT,
            "workers_online": _COUNT,
            "workers_stale": _COUNT,
            "subjects": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "required": ["queued", "in_flight", "submitted", "done", "failed", "dead"],
                    "properties": {
                        "queued": {"type": "integer"},
                        "in_flight": _COUNT,
                        "submitted": _COUNT,
                        "done": _COUNT,
                        "failed": _COUNT,
                        "dead": _COUNT,
                        "latency_p50": _nullable("number"),
                        "latency_p99": _nullable("number"),
                    },
                },
            },
            "groups": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "required": ["workers", "in_flight", "done", "failed", "dead"],
                    "properties": {
                        "workers": _COUNT,
                        "in_flight": _COUNT,
                        "done": _COUNT,
                        "failed": _COUNT,
                        "dead": _COUNT,
                        "state": {"type": "string"},
                    },
                },
            },
            "journal": _nullable("object"),
            "listen": {"type": "array", "items": {"type": "string"}},
        },
        "additionalProperties": True,
    },
    "Worker": _object(
        {
            "name": {"type": "string"},
            "group": {"type": "string"},
            "subjects": {
                "type": "array",
                "items": {"type": "string", "maxLength": MAX_SUBJECT_CHARS + 1},
                "maxItems": MAX_LISTED_SUBJECTS,
                "description": f"its first patterns ({MAX_LISTED_SUBJECTS} at most, within"
                f" 2 KiB), each cut to {MAX_SUBJECT_CHARS} characters (a cut one ends with …)",
            },
            "window": _COUNT,
            "in_flight": _COUNT,
            "host": _nullable("string", description="as its Hello said; for admins only"),
            "pid": _nullable("integer", description="as its Hello said; for admins only"),
            "peer": _nullable("string", description="its address, host:port; for admins only"),
            "connected_at": {"type": "number"},
            "last_heard": _nullable("number"),
            "state": {"type": "string", "enum": list(WORKER_STATES)},
            "left_at": _TIME,
        },
        closed=False,
        subjects_total={**_COUNT, "description": "how many patterns it serves"},
    ),
    "WorkerPage": _object(
        {
            "total": _COUNT,
            "offset": _COUNT,
            "limit": _COUNT,
            "workers": {"type": "array", "items": _ref("Worker")},
        }
    ),
    "JobError": _object(
        {
            "code": {"type": "string", "description": "the error's type"},
            "message": {"type": "string"},
            "traceback": _nullable("string", description="its end, when the worker sent one"),
        }
    ),
    "Job": _object(
        {
            "job_id": {"type": "string"},
            "subject": _nullable("string"),
            "state": {
                "type": "string",
                "enum": [
                    "queued",
                    "running",
                    "retrying",
                    "done",
                    "failed",
                    "dead",
                    "cancelled",
                    "expired",
                ],
            },
            "attempts": _COUNT,
            "max_attempts": _nullable("integer"),
            "worker": _nullable(
                "string",
                description="the worker running it; of a finished job, the one whose answer,"
                " failed attempt or cancellation ended it (while the leader keeps it)",
            ),
            "submitted_at": _TIME,
            "started_at": _TIME,
            "retry_at": _TIME,
            "finished_at": _TIME,
            "cancelling": _nullable("string", description="a running job asked to stop: why"),
            "result": {
                "description": "the result as JSON (bytes as {base64}); when truncated, the"
                " first 4 KiB of its JSON text"
            },
            "error": _nullable(_ref("JobError")),
            "truncated": {"type": "boolean"},
        }
    ),
    "CancelRequest": _object(
        {},
        reason={"type": "string", "maxLength": MAX_REASON, "description": "why (for its clients)"},
    ),
    "Cancelled": _object(
        {
            "job_id": {"type": "string"},
            "state": {
                "type": "string",
                "enum": ["cancelled", "cancelling"],
                "description": "cancelling: a running job's worker was asked to stop",
            },
        }
    ),
    "DeadLetterSummary": _object(
        {
            "job_id": {"type": "string"},
            "subject": {"type": "string"},
            "attempts": _COUNT,
            "error_type": _nullable("string"),
            "error_message": _nullable("string", description="cut to 500 characters"),
            "dead_at": _TIME,
        }
    ),
    "DeadLetterPage": _object(
        {
            "total": _COUNT,
            "offset": _COUNT,
            "limit": _COUNT,
            "dead_letters": {"type": "array", "items": _ref("DeadLetterSummary")},
        }
    ),
    "DeadLetter": _object(
        {
            "job_id": {"type": "string"},
            "subject": {"type": "string"},
            "attempts": _COUNT,
            "max_attempts": _nullable("integer"),
            "error_type": {"type": "string"},
            "error_message": {"type": "string"},
            "traceback": _nullable("string"),
            "dead_at": _TIME,
            "worker": _nullable(
                "string",
                description="the worker whose attempt failed last (null when none ran it, or"
                " the leader no longer keeps it in memory)",
            ),
            "identity": _nullable("string", description="who submitted the job"),
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "payload": {"description": "the job's payload, shown as a job's result is"},
            "truncated": {"type": "boolean"},
        }
    ),
    "Retried": _object(
        {
            "retried": _COUNT,
            "refused": {
                "type": "array",
                "items": {"type": "string"},
                "maxItems": 10,
                "description": "why some could not be (ten at most)",
            },
            "remaining": {
                **_COUNT,
                "description": "dead letters there are when it answers (of every subject):"
                " those not retried, and those that died since it started (retried jobs that"
                " failed again included). Retry-all stopped short when retried equals its"
                f" limit ({MAX_RETRY_ALL:,}): ask again then, not merely while remaining is"
                " above 0",
            },
        }
    ),
    "Purged": _object({"purged": _COUNT}),
    "Group": _object(
        {
            "name": {"type": "string"},
            "state": {
                "type": "string",
                "description": "running, stale (every worker connected is), idle, starting,"
                " failed: ...",
            },
            "instances": _nullable(
                "integer",
                description="how many it is to run, if managed (after a failed scaling: how"
                " many it runs)",
            ),
            "workers": _COUNT,
            "in_flight": _COUNT,
            "done": _COUNT,
            "failed": _COUNT,
            "redelivered": _COUNT,
            "dead": _COUNT,
            "latency_p50": _nullable("number"),
            "latency_p99": _nullable("number"),
            "patterns": {
                "type": "array",
                "items": {"type": "string"},
                "description": "the first its workers serve (20 at most), cut as a worker's",
            },
            "patterns_total": {**_COUNT, "description": "how many its workers serve"},
            "scale_error": _nullable("string", description="why its last scaling failed"),
            "workers_stale": {**_COUNT, "description": "of its workers, those silent too long"},
        }
    ),
    "GroupPage": _object(
        {
            "total": _COUNT,
            "offset": _COUNT,
            "limit": _COUNT,
            "managed": {"type": "boolean", "description": "whether PUT can scale its groups"},
            "groups": {"type": "array", "items": _ref("Group")},
        }
    ),
    "ScaleRequest": _object(
        {"instances": {"type": "integer", "minimum": 0, "maximum": MAX_INSTANCES}}
    ),
    "Scaled": _object(
        {"group": {"type": "string"}, "instances": {"type": "integer", "minimum": 0}}
    ),
}

#: The errors each kind of route may answer (besides 401 with users, and ``default``).
_ERRORS = {
    400: "bad parameters or body (or a body where the route takes none)",
    403: "not allowed: an Origin or Host this server does not serve, a non-admin, or the"
    " read-only mode (for methods other than GET)",
    404: "nothing there (or not the caller's)",
    409: "not in a state that allows it",
    413: "a body over 16 KiB",
    415: "a body that is not application/json",
    429: "too many journal queries at once (Retry-After)",
    503: "the journal cannot be read or written now (Retry-After)",
}


def _param(name: str, where: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "schema": schema,
        "description": description,
    }


def _offset() -> dict[str, Any]:
    return _param(
        "offset",
        "query",
        {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0},
        "entries to skip",
    )


def _limit(maximum: int) -> dict[str, Any]:
    return _param(
        "limit",
        "query",
        {"type": "integer", "minimum": 0, "maximum": maximum, "default": 100},
        "entries at most",
    )


def _operation(
    summary: str,
    result: str,
    *,
    errors: tuple[int, ...] = (),
    parameters: tuple[dict[str, Any], ...] = (),
    body: str | None = None,
    body_required: bool = False,
    secured: bool,
) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {
            "description": "OK",
            "content": {"application/json": {"schema": _ref(result)}},
        }
    }
    codes = {403, *errors}
    if body is not None:
        codes |= {400, 413, 415}
    if secured:
        codes.add(401)
    for code in sorted(codes):
        description = "no or a wrong token" if code == 401 else _ERRORS[code]
        responses[str(code)] = {
            "description": description,
            "content": {"application/json": {"schema": _ref("Error")}},
        }
    responses["default"] = {
        "description": "another error (400 a Host header that is not host[:port], 431 too"
        " many or too large headers, 500). A request"
        " the HTTP server itself cannot read (a malformed request line or header, headers"
        " still incomplete past 64 KiB) is answered 400 or 431 by that server before the"
        " leader sees it: with no body",
        "content": {"application/json": {"schema": _ref("Error")}},
    }
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if parameters:
        operation["parameters"] = list(parameters)
    if body is not None:
        operation["requestBody"] = {
            "required": body_required,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    return operation


def openapi_document(*, secured: bool, name: str = "leader") -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API of a leader called ``name``; ``secured``: it
    has users (every operation then needs a bearer token, and may answer 401)."""
    job_id = _param("job_id", "path", _NAME, "the job's id (percent-encoded)")
    group = _param("name", "path", _NAME, "the group's name")

    def op(summary: str, result: str, **more: Any) -> dict[str, Any]:
        return _operation(summary, result, secured=secured, **more)

    read_journal = (429, 503)
    no_body = (400, 413)  # (a body where the route takes none; one over 16 KiB)
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": f"trio-actors leader {name}",
            "version": "1",
            "description": "See and steer a running leader: statistics, workers, jobs, dead"
            " letters, worker groups.",
        },
        "paths": {
            "/openapi.json": {
                "get": _operation("This document", "Document", secured=secured),
            },
            "/api/stats": {"get": op("The leader's statistics", "Stats")},
            "/api/workers": {
                "get": op(
                    "A page of the workers (connected, then lately departed)",
                    "WorkerPage",
                    errors=(400,),
                    parameters=(
                        _offset(),
                        _limit(MAX_PAGE),
                        _param("group", "query", _NAME, "only this group's"),
                        _param(
                            "state",
                            "query",
                            {"type": "string", "enum": list(WORKER_STATES)},
                            "only those in this state",
                        ),
                    ),
                )
            },
            "/api/jobs/{job_id}": {
                "get": op(
                    "One job: its state, attempts, worker, times, result or error",
                    "Job",
                    errors=(400, 404, *read_journal),
                    parameters=(job_id,),
                )
            },
            "/api/jobs/{job_id}/cancel": {
                "post": op(
                    "Cancel a job (its owner, or an admin)",
                    "Cancelled",
                    errors=(400, 404, 409, 503),
                    parameters=(job_id,),
                    body="CancelRequest",
                )
            },
            "/api/dead-letters": {
                "get": op(
                    "A page of the dead letters, newest first (admins)",
                    "DeadLetterPage",
                    errors=(400, *read_journal),
                    parameters=(
                        _offset(),
                        _limit(MAX_DEAD_LETTER_PAGE),
                        _param(
                            "subject",
                            "query",
                            {"type": "string", "minLength": 1, "maxLength": MAX_SUBJECT_LENGTH},
                            "only this subject's",
                        ),
                    ),
                ),
                "delete": op(
                    "Purge every dead letter (admins)", "Purged", errors=(*no_body, *read_journal)
                ),
            },
            "/api/dead-letters/retry": {
                "post": op(
                    "Requeue the dead letters, oldest first, 10,000 at most (admins)",
                    "Retried",
                    errors=(*no_body, *read_journal),
                )
            },
            "/api/dead-letters/{job_id}": {
                "get": op(
                    "One dead letter, with its payload and traceback (admins)",
                    "DeadLetter",
                    errors=(400, 404, *read_journal),
                    parameters=(job_id,),
                ),
                "delete": op(
                    "Purge one dead letter (admins)",
                    "Purged",
                    errors=(*no_body, 404, *read_journal),
                    parameters=(job_id,),
                ),
            },
            "/api/dead-letters/{job_id}/retry": {
                "post": op(
                    "Requeue one dead letter as a new job under its id (admins)",
                    "Retried",
                    errors=(*no_body, 404, 409, *read_journal),
                    parameters=(job_id,),
                )
            },
            "/api/groups": {
                "get": op(
                    "A page of the worker groups",
                    "GroupPage",
                    errors=(400,),
                    parameters=(_offset(), _limit(MAX_PAGE)),
                )
            },
            "/api/groups/{name}": {
                "put": op(
                    "Change a group's instance count (admins; a cluster's groups only: 409"
                    " when the leader does not manage its groups)",
                    "Scaled",
                    errors=(400, 404, 409),
                    parameters=(group,),
                    body="ScaleRequest",
                    body_required=True,
                )
            },
        },
        "components": {
            "schemas": {**_SCHEMAS, "Document": {"type": "object"}},
        },
    }
    if secured:
        document["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "a user's token"}
        }
        document["security"] = [{"bearer": []}]
    return document
