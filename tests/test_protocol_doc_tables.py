"""The tables of ``docs/protocol.md``, read as a reader reads them, held to what the code does.

``tests/test_protocol_package.py`` checks that the generated tables are what
``docs/gen_protocol_md.py`` makes of the code; this module checks what they *say*, from the
Markdown alone: every kind with its tag, its fields and their wire keys; who may send what
(and that a leader really serves each kind marked *yes* and refuses each kind marked
*reserved* with ``not_permitted``, over a real connection); every error code, whether it
closes, and that each code not marked *reserved* is really sent by the leader, the runtime
or the worker (found in their sources) while each reserved one is sent nowhere; the limits.
So the document cannot promise what the leader does not do.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import trio

import protocol
from actors import Leader
from protocol import (
    ALLOWED,
    MESSAGE_TYPES,
    ROLES,
    Ack,
    Bye,
    CacheAck,
    CachePut,
    Cancel,
    Chunk,
    Credit,
    Error,
    ErrorCode,
    Hello,
    Message,
    Nack,
    Ping,
    Pong,
    Progress,
    ProtocolError,
    Publish,
    Query,
    Result,
    Submit,
    Subscribe,
    Unsubscribe,
    Welcome,
)
from protocol._session import RESERVED, WORKER_SUBMIT
from runtime import open_connection

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
#: Where messages are sent from: the code whose sends the error table describes.
SENDING_SOURCES = [
    ROOT / "actors" / "leader",
    ROOT / "actors" / "worker",
    ROOT / "runtime",
    ROOT / "protocol",
]
#: Kinds the connection itself answers or consumes (runtime tests cover them), for
#: every role alike.
CONNECTION_KINDS = {Ping, Pong, Error, Bye}


# ---------------------------------------------------------------------------------------
# Reading the Markdown


def _rows(lines: list[str]) -> list[list[str]]:
    """The body rows of the first Markdown table in ``lines``, as lists of stripped cells."""
    table = []
    for line in lines:
        if line.startswith("|"):
            table.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif table:
            break
    header, rule, *body = table
    assert set("".join(rule)) <= set("-:"), f"not a table rule under {header}: {rule}"
    assert all(len(row) == len(header) for row in body), f"ragged table under {header}"
    return [header, *body]


def section(name: str) -> list[str]:
    """The lines between ``<!-- begin name -->`` and ``<!-- end name -->``."""
    match = re.search(rf"<!-- begin {name} -->\n(.*?)<!-- end {name} -->", DOC, flags=re.DOTALL)
    assert match, f"docs/protocol.md has no {name} section"
    return match.group(1).splitlines()


def table(name: str) -> tuple[list[str], list[list[str]]]:
    """The header and the rows of the table of section ``name``."""
    header, *rows = _rows(section(name))
    return header, rows


def code_of(cell: str) -> str:
    """``x`` of a cell written `` `x` ``."""
    match = re.fullmatch(r"`([^`]+)`", cell)
    assert match, f"expected a `code` cell, got {cell!r}"
    return match.group(1)


def message_tables() -> Iterator[tuple[str, int, list[list[str]]]]:
    """(kind name, tag, field rows) of every message under *Messages*."""
    text = "\n".join(section("messages"))
    for block in re.split(r"^### ", text, flags=re.MULTILINE)[1:]:
        name, _, rest = block.partition("\n")
        tag = re.search(r"Tag \*\*(\d+)\*\*\.", rest)
        assert tag, f"{name}: no 'Tag **N**.' line"
        _, *rows = _rows(rest.splitlines())
        yield name.strip(), int(tag.group(1)), rows


# ---------------------------------------------------------------------------------------
# Kinds and their fields


def test_the_tag_table_is_every_kind_with_its_tag():
    _, rows = table("tags")
    documented = {}
    for tag, link, _summary in rows:
        name = re.fullmatch(r"\[(\w+)\]\(#(\w+)\)", link)
        assert name and name.group(2) == name.group(1).lower(), link
        assert int(tag) not in documented, f"tag {tag} twice"
        documented[int(tag)] = name.group(1)
    assert documented == {tag: cls.__name__ for tag, cls in MESSAGE_TYPES.items()}
    for tag, cls in MESSAGE_TYPES.items():
        assert tag == cls.KIND and getattr(protocol, cls.__name__) is cls


def test_every_kind_has_its_fields_table():
    seen = set()
    for name, tag, rows in message_tables():
        cls = MESSAGE_TYPES[tag]
        assert cls.__name__ == name, f"tag {tag} is {cls.__name__}, documented as {name}"
        seen.add(cls)
        fields = attrs.fields(cls)
        assert [row[0] for row in rows] == [f.name for f in fields], name  # in bundle order
        for (field_name, key, _type, default, _meaning), field in zip(rows, fields, strict=True):
            wire_key = (
                protocol._payload.ENCODED_KEY
                if field.metadata.get("payload")
                else field.metadata["key"]
            )
            assert code_of(key) == wire_key, f"{name}.{field_name}"
            assert (default == "required") == (field.default is attrs.NOTHING), (
                f"{name}.{field_name}"
            )
    assert seen == set(MESSAGE_TYPES.values())


# ---------------------------------------------------------------------------------------
# Who may send what


def documented_permissions() -> dict[str, dict[str, str]]:
    """role -> kind name -> the table's mark ("yes", "reserved" or "")."""
    header, rows = table("roles")
    assert header[0] == "Message"
    roles = header[1:]
    return {role: {row[0]: row[1 + i] for row in rows} for i, role in enumerate(roles)}


def test_the_permission_table_is_the_session_table():
    documented = documented_permissions()
    assert set(documented) == set(ROLES)
    kinds = {cls.__name__: cls for cls in MESSAGE_TYPES.values() if cls not in (Hello, Welcome)}
    for role, marks in documented.items():
        assert set(marks) == set(kinds), role
        assert RESERVED[role] <= ALLOWED[role], f"{role}: a reserved kind the session refuses"
        for name, mark in marks.items():
            cls = kinds[name]
            expected = (
                "reserved" if cls in RESERVED[role] else "yes" if cls in ALLOWED[role] else ""
            )
            assert mark == expected, (
                f"{role} sending {name}: the doc says {mark!r}, the code {expected!r}"
            )


def test_no_table_mentions_an_option_the_leader_lacks():
    """The worker's Submit and Cancel need ``Session(worker_may_submit=True)``, which the
    leader never sets: the table shows them as not allowed, not "if allowed"."""
    marks = documented_permissions()["worker"]
    for cls in WORKER_SUBMIT:
        assert marks[cls.__name__] == ""
    assert "worker_may_submit" not in (ROOT / "actors" / "leader" / "_leader.py").read_text()
    assert "if allowed" not in DOC


def _names_used(directory: Path) -> set[str]:
    names = set()
    for path in directory.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Name):
                names.add(node.id)
            elif isinstance(node, ast.alias):
                names.add(node.asname or node.name)
    return names


def test_the_leader_sends_the_kinds_of_its_column_and_none_it_reserves():
    leader_code = _names_used(ROOT / "actors" / "leader")
    runtime_code = _names_used(ROOT / "runtime")  # (Ping, Pong, Bye, Error of every connection)
    for cls in ALLOWED["leader"]:
        if cls in RESERVED["leader"]:
            assert cls.__name__ not in leader_code, f"the leader uses {cls.__name__}, reserved"
        else:
            assert cls.__name__ in leader_code | runtime_code, (
                f"nothing of the leader sends {cls.__name__}"
            )


def example(cls: type[Message], mid: int) -> Message:
    """A message of kind ``cls`` that a peer may send, harmless to a fresh leader."""
    examples: dict[type[Message], Message] = {
        Submit: Submit(mid=mid, job_id=f"doc-{mid}", subject="doc.nobody", qos=0),
        Cancel: Cancel(mid=mid, job_id="doc-unknown"),
        Publish: Publish(mid=mid, subject="doc.news"),
        Subscribe: Subscribe(mid=mid, sid=mid, pattern="doc.>"),
        Unsubscribe: Unsubscribe(mid=mid, sid=mid - 1),
        Query: Query(mid=mid, what="stats"),
        Ack: Ack(mid=mid, job_id="doc-unknown"),
        Result: Result(mid=mid, job_id="doc-unknown"),
        Nack: Nack(mid=mid, job_id="doc-unknown"),
        Progress: Progress(mid=mid, job_id="doc-unknown"),
        Credit: Credit(mid=mid, credit=0),
        CachePut: CachePut(mid=mid, cache_id="c", target="doc.>"),
        CacheAck: CacheAck(mid=mid, cache_id="c"),
        Chunk: Chunk(mid=mid, transfer_id="x", index=0),
        Ping: Ping(mid=mid),
        Pong: Pong(mid=mid),
        Error: Error(mid=mid, code=ErrorCode.BUSY, message="just saying"),
    }
    return examples[cls]


async def exchange(
    url: str, role: str, kinds: list[type[Message]]
) -> tuple[list[int], list[Message]]:
    """Open a session as ``role``, send a message of each of ``kinds`` in that order, and
    return their mids and what the leader sent until it answered a last request (sent
    after them: the leader answers in order)."""
    hello = Hello(
        mid=0, role=role, versions=[2, 1], patterns=["doc.work"] if role == "worker" else []
    )
    async with open_connection(url, hello=hello) as conn:
        mids = []
        for cls in kinds:
            mid = conn.next_mid()
            mids.append(mid)
            await conn.send(example(cls, mid))
        last = conn.next_mid()
        if role == "observer":  # answered not_found
            await conn.send(Query(mid=last, what="result", job_id="doc-none"))
        else:  # answered Ack
            await conn.send(Publish(mid=last, subject="doc.sync", qos=1))
        received = []
        while True:
            message = await conn.receive()
            received.append(message)
            if getattr(message, "cid", None) == last:
                assert type(message) is (Error if role == "observer" else Ack), message
                return mids, received


@pytest.fixture
async def leader_url(nursery: trio.Nursery) -> str:
    leader = Leader(listen=["tcp://127.0.0.1:0"], heartbeat=None)
    [url] = await nursery.start(leader.run)
    return url


@pytest.mark.parametrize("role", sorted(r for r in ROLES if RESERVED[r] and r != "leader"))
async def test_a_reserved_kind_is_refused_not_permitted_naming_it(leader_url: str, role: str):
    kinds = sorted(RESERVED[role], key=lambda cls: cls.KIND)
    with trio.fail_after(10):
        mids, received = await exchange(leader_url, role, kinds)
    refusals = {m.cid: m for m in received if type(m) is Error}
    for mid, cls in zip(mids, kinds, strict=True):
        assert mid in refusals, f"a {role}'s {cls.__name__} was dropped unanswered"
        refusal = refusals[mid]
        assert refusal.code == ErrorCode.NOT_PERMITTED
        assert f"{cls.__name__} from a {role} is reserved" in refusal.message
    # ... and the session stayed open: the request after them was answered.


@pytest.mark.parametrize("role", sorted(r for r in ROLES if r != "leader"))
async def test_a_served_kind_is_never_refused_not_permitted(leader_url: str, role: str):
    kinds = sorted(ALLOWED[role] - RESERVED[role] - {Bye}, key=lambda cls: cls.KIND)
    marks = documented_permissions()[role]
    assert kinds == sorted(
        (
            cls
            for cls in MESSAGE_TYPES.values()
            if marks.get(cls.__name__) == "yes" and cls is not Bye
        ),
        key=lambda cls: cls.KIND,
    )
    with trio.fail_after(10):
        mids, received = await exchange(leader_url, role, kinds)
    by_mid = dict(zip(mids, kinds, strict=True))
    for message in received:
        if type(message) is Error and message.cid in by_mid:
            assert message.code != ErrorCode.NOT_PERMITTED, (by_mid[message.cid].__name__, message)
    if Error in kinds:  # a peer's Error is never answered
        assert not [m for m in received if type(m) is Error and m.cid == mids[kinds.index(Error)]]
    # (Ping's Pong is the connection's business: runtime's tests; it returns no Pong here)
    if Query in kinds:  # (stats)
        assert any(
            type(m) is Result and m.cid == mids[kinds.index(Query)] and m.ok for m in received
        )


# ---------------------------------------------------------------------------------------
# Error codes


def all_codes() -> list[str]:
    return [
        value for key, value in vars(ErrorCode).items() if key.isupper() and isinstance(value, str)
    ]


def protocol_error_classes() -> list[type[ProtocolError]]:
    found, todo = [], [ProtocolError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return found


def test_the_error_table_is_every_code():
    header, rows = table("errors")
    assert header == ["Code", "Closes", "Sent", "Raised as", "Meaning"]
    documented = [code_of(row[0]) for row in rows]
    assert sorted(documented) == sorted(all_codes()) and len(set(documented)) == len(documented)
    assert set(all_codes()) > ErrorCode.RESERVED and set(all_codes()) > ErrorCode.CLOSING
    for code, closes, sent, raised_as, meaning in rows:
        code = code_of(code)
        assert closes == ("yes" if code in ErrorCode.CLOSING else "no"), code
        assert sent == ("reserved" if code in ErrorCode.RESERVED else "yes"), code
        classes = {c.__name__ for c in protocol_error_classes() if c.code == code}
        assert {code_of(c.strip()) for c in raised_as.split(",") if c.strip()} == classes, code
        assert meaning, code


def _is_error_code(node: ast.AST) -> str | None:
    """The code ``ErrorCode.X`` (or ``protocol.ErrorCode.X``) names, if ``node`` is one."""
    if not isinstance(node, ast.Attribute):
        return None
    owner = node.value
    if (isinstance(owner, ast.Name) and owner.id == "ErrorCode") or (
        isinstance(owner, ast.Attribute) and owner.attr == "ErrorCode"
    ):
        return getattr(ErrorCode, node.attr, None)
    return None


def sends_in_sources() -> tuple[dict[str, list[str]], set[str], bool]:
    """What the sending code does with error codes, read from its syntax trees:

    - the codes passed to a call (an argument, or a keyword's value, directly or as a
      branch of a conditional: ``Error(code=ErrorCode.X)``, ``refuse(ErrorCode.X, ...)``),
      each with where; a comparison or a set of codes is not a send;
    - the names of the classes made (``raise InvalidField(...)``, or by a helper that
      returns one to raise);
    - whether a received ProtocolError is answered with its own code
      (``Error(..., code=exc.code)``), which is how raised protocol errors are sent.
    """
    sent: dict[str, list[str]] = {}
    made: set[str] = set()
    answers_with_exc_code = False
    for directory in SENDING_SOURCES:
        for path in sorted(directory.rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            parents = {
                child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)
            }
            for node in ast.walk(tree):
                if isinstance(node, ast.Call):
                    func = node.func
                    made.add(func.id if isinstance(func, ast.Name) else getattr(func, "attr", ""))
                if (
                    isinstance(node, ast.Call)
                    and getattr(node.func, "id", getattr(node.func, "attr", None)) == "Error"
                    and any(
                        k.arg == "code"
                        and isinstance(k.value, ast.Attribute)
                        and k.value.attr == "code"
                        for k in node.keywords
                    )
                ):
                    answers_with_exc_code = True
                code = _is_error_code(node)
                if code is None:
                    continue
                child, parent = node, parents[node]
                while isinstance(parent, ast.IfExp) and child is not parent.test:
                    child, parent = parent, parents[parent]
                if isinstance(parent, ast.keyword) or (
                    isinstance(parent, ast.Call) and child in parent.args
                ):
                    where = f"{path.relative_to(ROOT)}:{node.lineno}"
                    sent.setdefault(code, []).append(where)
    return sent, made, answers_with_exc_code


def test_every_code_not_reserved_is_sent_and_no_reserved_one_is():
    sent, made, answers_with_exc_code = sends_in_sources()
    assert answers_with_exc_code, "no Error(code=exc.code): raised protocol errors are never sent"
    by_raising = {}
    for cls in protocol_error_classes():
        if cls.__name__ in made:
            by_raising.setdefault(cls.code, []).append(cls.__name__)
    for code in all_codes():
        how = sent.get(code, []) + by_raising.get(code, [])
        if code in ErrorCode.RESERVED:
            assert not how, f"{code} is marked reserved but sent: {how}"
        else:
            assert how, f"{code} is documented as sent, but nothing sends it: mark it reserved"


def test_the_cancelled_code_travels_in_results():
    """``cancelled`` is a Result's ``error_code`` (the one code a Result carries), and the
    doc's Result table says so."""
    rows = {name: rows for name, _tag, rows in message_tables()}["Result"]
    [row] = [r for r in rows if r[0] == "error_code"]
    assert "`cancelled`" in row[4]
    assert (
        Result(mid=1, job_id="j", ok=False, error_code=ErrorCode.CANCELLED).error_code
        == "cancelled"
    )


def test_the_bundle_error_table_names_real_codes():
    start = DOC.index("### Errors in a bundle")
    header, *rows = _rows(DOC[start:].splitlines())
    assert header == ["Problem", "Code"]
    for _problem, code in rows:
        assert code_of(code.split(" ")[0]) in all_codes(), code


# ---------------------------------------------------------------------------------------
# Limits


def test_the_limit_table_is_the_limits():
    _, rows = table("limits")
    documented = {code_of(name): int(value) for name, value, _unit, _bounds in rows}
    names = [name for name in vars(protocol._limits) if name.isupper()]
    assert documented == {name: getattr(protocol, name) for name in names}
