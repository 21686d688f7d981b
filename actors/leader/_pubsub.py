"""Publish/subscribe, sans-I/O: the leader's router of published messages.

:class:`PubSubRouter` owns the subscriptions (in an index of their patterns), the queue
groups and the :class:`~actors.leader._retained.RetainedMessages`; the :class:`~actors.leader.Broker`
holds one and hands it the Publish, Subscribe and Unsubscribe it receives. Delivery is at
most once: a message goes to every plain subscription, to one member of each queue group,
to every broadcast-mode worker and to one worker of each round-robin group; the last
message of a subject can be retained and is replayed to later subscribers.

What one frame costs the router is bounded by what it sends, not by what a peer built
within its limits before (the leader is one process: while it handles a frame, every other
peer waits):

- The index holds one entry per connection and pattern (:class:`_Entry`), whatever number
  of subscriptions the connection made to that pattern; a queue group's members, by
  pattern, are a list (:class:`_QueueGroup`) that a Publish picks one member of by
  position: a group of 10,000 members costs one delivery.
- One Publish makes one Deliver per subscription it is for, as NATS does, to a connection
  with at most :data:`SEPARATE_DELIVERS` of them; to one with more, one Deliver naming them
  all (``sid``, and the rest in ``Deliver.also``): its matching plain subscriptions and the
  queue group members picked on it. None is left out. An entry keeps
  its sids CBOR-encoded (:class:`_SidSet`), and what a subject is routed to is worked out
  once (then kept, see :data:`MAX_ROUTES`) down to each connection's Deliver; so a Publish
  costs a step per connection it reaches and per queue group it matches, and a copy of
  bytes for the sids, however many subscriptions or patterns a connection holds.
- A Subscribe that repeats a subscription (same sid, pattern and queue) changes nothing
  and replays nothing; and one connection is replayed at most ``max_retained`` retained
  messages at once, an allowance that comes back at that many per :data:`REPLAY_REFILL`
  seconds: a Subscribe whose replay it does not cover is refused ``busy`` with
  ``retry_after`` (and changes nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import attrs
import cbor2

from protocol import (
    BUNDLE_OVERHEAD,
    MAX_DELIVER_SIDS,
    Ack,
    Deliver,
    Encoded,
    ErrorCode,
    GroupMode,
    Publish,
    SubjectIndex,
    Subscribe,
    Unsubscribe,
    encode_array,
)
from runtime import MessageTooLarge

from ._links import ClientLink, Link, SubscriptionRecord, WorkerLink
from ._retained import RetainedMessages
from ._sizes import FORWARD_RESERVE, SURELY_FITS, payload_size

#: Seconds in which a connection's allowance of replayed retained messages
#: (``max_retained``) comes back in full.
REPLAY_REFILL = 1.0
#: Subjects whose routes (what a Publish to them does, see :class:`_Route`) are kept at
#: most, and the connections, queue groups and subscription ids they may name in all;
#: past either, they are all dropped.
MAX_ROUTES = 4096
MAX_ROUTE_ENTRIES = 65_536
#: Round-robin turn counters of worker groups kept at most (then they start again).
MAX_TURNS = 10_000

#: Subscriptions of one connection that one Publish is for, at most, that each get a
#: Deliver of their own; past it, one Deliver names them all (``Deliver.also``).
SEPARATE_DELIVERS = 16

_deliver_item = Deliver.item  # type: ignore[attr-defined]
_dumps = cbor2.dumps
#: The place of ``also`` in a Deliver's bundle item (the tag, then the fields in order).
_ALSO = 1 + [field.name for field in attrs.fields(Deliver)].index("also")


class _SidSet:
    """The sids of one connection's plain subscriptions to one pattern, each kept as its
    CBOR encoding: a Deliver that names them all is built by copying bytes.

    The encodings of one width (1 byte for sids up to 23, then 2, 3, 5 or 9) lie end to end
    in one array, so that removing a sid moves the last of its array into its place: O(1).
    Why: encoding 10,000 sids (cbor2, a list) takes some 0.4 ms, copying their 30 KB a few
    µs; a connection that changed one of them and published, over and over, would make
    every Publish pay the 0.4 ms.
    """

    __slots__ = ("_arrays", "_where")

    def __init__(self) -> None:
        self._arrays: dict[int, bytearray] = {}  # width -> the encodings of that width
        self._where: dict[int, int] = {}  # sid -> its place in the array of its width

    def __len__(self) -> int:
        return len(self._where)

    def __iter__(self) -> Iterator[int]:
        return iter(self._where)

    def add(self, sid: int) -> None:
        if sid in self._where:
            return
        code = _dumps(sid)
        array = self._arrays.get(len(code))
        if array is None:
            array = self._arrays[len(code)] = bytearray()
        self._where[sid] = len(array) // len(code)
        array += code

    def remove(self, sid: int) -> None:
        place = self._where.pop(sid)
        width = len(_dumps(sid))
        array = self._arrays[width]
        start = place * width
        last = len(array) - width
        if start != last:
            array[start : start + width] = array[last:]
            self._where[_uint_at(array, start, width)] = place
        del array[last:]
        if not array:
            del self._arrays[width]

    def segments(self) -> list[tuple[int, bytes]]:
        """The encodings, as ``(width, the encodings of that width end to end)``."""
        return [(width, bytes(array)) for width, array in self._arrays.items()]


@attrs.define(eq=False)
class _QueueGroup:
    """The members of one queue group under one pattern, from every connection: a
    Publish picks one by position (O(1) however many they are)."""

    name: str
    pattern: str
    members: list[SubscriptionRecord] = attrs.field(factory=list)
    #: each member's index in ``members``, for removal in O(1)
    positions: dict[SubscriptionRecord, int] = attrs.field(factory=dict)
    #: publishes picked from this group (when a subject matches several patterns with
    #: this group name, the first group's turn counts for all)
    turn: int = 0

    def add(self, sub: SubscriptionRecord) -> None:
        self.positions[sub] = len(self.members)
        self.members.append(sub)

    def remove(self, sub: SubscriptionRecord) -> None:
        """Remove ``sub``, the last member taking its place."""
        position = self.positions.pop(sub)
        last = self.members.pop()
        if last is not sub:
            self.members[position] = last
            self.positions[last] = position


@attrs.define(eq=False)
class _Entry:
    """The subscriptions of one connection to one pattern: its value in the index."""

    link: ClientLink
    pattern: str
    #: the sids of its plain subscriptions
    sids: _SidSet = attrs.field(factory=_SidSet)
    #: the queue groups it has members in, and how many (None until it has: most have not)
    groups: dict[_QueueGroup, int] | None = None


#: What a Deliver names: ``(sid, also, how many sids also holds)``, ``also`` the list of
#: the other sids encoded (or None when there are none).
_Part = tuple[int, Encoded | None, int]


@attrs.define(eq=False)
class _Target:
    """A connection with plain subscriptions that a subject matches, and the Deliver that
    names them all (several if they are over ``MAX_DELIVER_SIDS``)."""

    link: ClientLink
    #: their sids, encoded (see :meth:`_SidSet.segments`), those of each matching entry
    segments: list[tuple[int, bytes]]
    parts: list[_Part]


@attrs.define(eq=False)
class _Route:
    """What a Publish to one subject does, worked out when it is first published to (and
    kept until the subscriptions change)."""

    #: one per connection with matching plain subscriptions, in the index's order
    targets: tuple[_Target, ...]
    #: the matching queue groups, those of one name together (NATS merges the members of
    #: one name across the patterns that match): a Publish picks one member of each
    groups: tuple[list[_QueueGroup], ...]
    #: what it counts against MAX_ROUTE_ENTRIES: connections, groups and sids
    size: int


class PubSubRouter:
    """Routes published messages to subscriptions and workers; keeps retained messages.

    Args:
      workers: the broker's index of worker patterns (read here, never changed): workers
        receive published messages too, as Deliver with sid 0.
      max_frame: the largest frame body the leader forwards (a Publish whose Deliver
        would not fit is refused ``too_large``).
      max_subscriptions: subscriptions one client connection may hold.
      max_retained, max_retained_bytes: the bounds of the retained messages
        (``max_retained`` is also a connection's allowance of replayed ones).
    """

    def __init__(
        self,
        workers: SubjectIndex,
        *,
        max_frame: int,
        max_subscriptions: int,
        max_retained: int,
        max_retained_bytes: int,
    ) -> None:
        self.workers = workers
        self.max_frame = max_frame
        self.max_subscriptions = max_subscriptions
        self.retained = RetainedMessages(max_retained, max_retained_bytes)
        # The index's answers are not cached there: _routes keeps what they come to.
        self._index = SubjectIndex(cache_capacity=0)
        self._entries: dict[ClientLink, dict[str, _Entry]] = {}  # by connection, by pattern
        self._groups: dict[tuple[str, str], _QueueGroup] = {}
        self._routes: dict[str, _Route] = {}
        self._routes_size = 0
        self._worker_turns: dict[str, int] = {}
        # Per connection that had retained messages replayed: (allowance left, as of when).
        self._replays: dict[ClientLink, tuple[float, float]] = {}
        #: Given every message published here (``subject, payload, headers``), after it is
        #: routed here: the leaders of a shared store pass it on to each other (None: no).
        self.forward: Callable[[str, Any, dict[str, str]], None] | None = None

    # ------------------------------------------------------------------ publish

    def publish(self, client: ClientLink | WorkerLink, msg: Publish, now: float) -> None:
        """Route a Publish (retaining it first if asked), then Ack it if its qos is 1.

        A message whose Deliver would be over the leader's frame limit is answered
        ``too_large`` and not routed; a subscriber whose own limit it does not fit misses
        it (delivery is at most once)."""
        size = payload_size(msg.payload) + len(msg.subject)
        if msg.headers:
            for key, value in msg.headers.items():
                size += len(key) + len(value) + 2
        if size > SURELY_FITS and not self._deliver_fits(msg):
            client.refuse(
                msg,
                ErrorCode.TOO_LARGE,
                f"message to {msg.subject} is too large to forward: over the"
                f" leader's frame limit of {self.max_frame} bytes",
            )
            return
        if msg.retain:
            self.retained.put(msg.subject, msg.payload, msg.headers, size)
        self.route(msg.subject, msg.payload, msg.headers)
        if self.forward is not None and msg.subject[0] != "$":
            self.forward(msg.subject, msg.payload, msg.headers)
        if msg.qos == 1:
            client.send(Ack(mid=client.next_mid(), cid=msg.mid))

    def _deliver_fits(self, msg: Publish) -> bool:
        try:
            item = _deliver_item(
                mid=2**32,
                sid=2**32,
                subject=msg.subject,
                payload=msg.payload,
                headers=msg.headers,
                retained=True,
            )
            encoded = len(encode_array(item))
        except Exception:  # (noqa: BLE001) it could not be forwarded at all
            return False
        return encoded + BUNDLE_OVERHEAD + FORWARD_RESERVE <= self.max_frame

    def route(self, subject: str, payload: Any, headers: dict[str, str]) -> None:
        """Deliver a message to the matching plain subscriptions and one member of each
        matching queue group (one Deliver to each connection, naming them all), every
        broadcast-mode worker and one worker of each round-robin group."""
        route = self._route_of(subject)
        delivery = _Delivery(subject, payload, headers)
        if route.groups:
            picked: dict[ClientLink, list[int]] = {}  # the members picked, by connection
            for same_name in route.groups:
                member = _pick(same_name)
                sids = picked.get(member.link)
                if sids is None:
                    picked[member.link] = [member.sid]
                else:
                    sids.append(member.sid)
            for target in route.targets:
                sids = picked.pop(target.link, None)
                if sids is None:
                    delivery.to_all(target.link, target.parts, target.segments)
                else:
                    delivery.to_sids(target.link, target.segments + _segments_of(sids))
            for link, sids in picked.items():
                if len(sids) == 1:
                    delivery.to_one(link, sids[0])
                else:
                    delivery.to_sids(link, _segments_of(sids))
        else:
            for target in route.targets:
                delivery.to_all(target.link, target.parts, target.segments)
        if subject[0] != "$":  # (the system's subjects, dead letters, go to clients only)
            self._route_to_workers(subject, delivery)

    def _route_of(self, subject: str) -> _Route:
        """What a Publish to ``subject`` does: each connection's matching plain
        subscriptions (in the index's order), with the Delivers that name them built, and
        the matching queue groups; kept until the subscriptions change."""
        routes = self._routes
        route = routes.get(subject)
        if route is not None:
            return route
        segments: dict[ClientLink, list[tuple[int, bytes]]] = {}
        groups: dict[str, list[_QueueGroup]] = {}  # by name
        matches: tuple[Any, ...] = self._index.match(subject)
        for entry in matches:
            allowed = entry.link.receive_filter
            if allowed is not None and not allowed.allows(subject):
                continue  # (its permissions deny it this subject: never delivered)
            if entry.sids:
                found = segments.get(entry.link)
                if found is None:
                    segments[entry.link] = entry.sids.segments()
                else:
                    found += entry.sids.segments()
            if entry.groups:
                for group in entry.groups:
                    same_name = groups.get(group.name)
                    if same_name is None:
                        groups[group.name] = [group]
                    elif group not in same_name:  # (reached through another connection)
                        same_name.append(group)
        targets = tuple(
            _Target(link, found, list(_parts(found, _per_deliver(found))))
            for link, found in segments.items()
        )
        size = 1 + len(groups)
        for target in targets:
            size += 1 + sum(1 + count for _, _, count in target.parts)
        route = _Route(targets, tuple(groups.values()), size)
        if len(routes) >= MAX_ROUTES or self._routes_size + size > MAX_ROUTE_ENTRIES:
            self._forget_routes()
        if size <= MAX_ROUTE_ENTRIES:
            routes[subject] = route
            self._routes_size += size
        return route

    def forget_routes(self) -> None:
        """Work every route out again (the delivery filters of connections changed)."""
        self._forget_routes()

    def _forget_routes(self) -> None:
        if self._routes:
            self._routes.clear()
            self._routes_size = 0

    def _route_to_workers(self, subject: str, delivery: _Delivery) -> None:
        groups: dict[str, list[WorkerLink]] = {}
        for worker in dict.fromkeys(self.workers.match(subject)):  # once per worker
            if worker.mode == GroupMode.BROADCAST:
                delivery.to_one(worker, 0)
            else:
                groups.setdefault(worker.group, []).append(worker)
        turns = self._worker_turns
        for name, members in groups.items():
            position = turns.get(name, 0) % len(members)
            if len(turns) >= MAX_TURNS and name not in turns:
                turns.clear()  # (a turn counter is only a fairness hint)
            turns[name] = position + 1
            delivery.to_one(members[position], 0)

    # ------------------------------------------------------------------ subscriptions

    def subscribe(self, client: ClientLink, msg: Subscribe, now: float) -> None:
        """Add (or replace) subscription ``msg.sid`` and replay the retained messages it
        matches.

        A Subscribe that repeats the connection's subscription of that sid (same pattern
        and queue) changes nothing and replays nothing. A client at ``max_subscriptions``
        is answered ``not_permitted``; one whose replay allowance does not cover the
        retained messages the pattern matches, ``busy`` with ``retry_after`` (when the
        allowance is full again). A refused Subscribe changes nothing."""
        subscriptions = client.subscriptions
        old = subscriptions.get(msg.sid)
        if old is not None and old.pattern == msg.pattern and old.queue == msg.queue:
            return  # the same subscription again: it stands, and had its replay
        if old is None and len(subscriptions) >= self.max_subscriptions:
            client.refuse(
                msg,
                ErrorCode.NOT_PERMITTED,
                f"subscription limit reached ({self.max_subscriptions} per connection)",
            )
            return
        replay = self._replay_for(client, msg, now)
        if replay is None:
            return
        if old is not None:
            self._remove(old)
        sub = SubscriptionRecord(client, msg.sid, msg.pattern, msg.queue)
        self._add(sub)
        subscriptions[msg.sid] = sub
        retained = self.retained
        for subject in replay:
            payload, headers = retained.get(subject)  # type: ignore[misc]
            item = _deliver_item(
                mid=0, sid=0, subject=subject, payload=payload, headers=headers, retained=True
            )
            _send_one(client, item, msg.sid)

    def _replay_for(self, client: ClientLink, msg: Subscribe, now: float) -> list[str] | None:
        """The retained subjects to replay to ``msg``'s subscription, charged to the
        connection's allowance; None (and ``client`` is answered ``busy``) if they are
        more than it has left."""
        retained = self.retained
        if not retained:
            return []
        full = retained.max_count
        left = full
        charged = self._replays.get(client)
        if charged is not None:
            left = min(full, charged[0] + max(0.0, now - charged[1]) * full / REPLAY_REFILL)
        allowed = client.receive_filter
        if allowed is None:
            subjects = retained.matching(msg.pattern, limit=int(left) + 1)
        else:  # (what it may not receive neither counts nor hides what it may)
            subjects = [s for s in retained.matching(msg.pattern, limit=full) if allowed.allows(s)]
        if len(subjects) > left:
            client.refuse(
                msg,
                ErrorCode.BUSY,
                f"retained messages replayed too fast: {msg.pattern} matches more than"
                f" the {int(left)} this connection may be replayed now ({full} per"
                f" {REPLAY_REFILL:g} s)",
                retry_after=max(0.001, round((full - left) * REPLAY_REFILL / full, 3)),
            )
            return None
        if subjects:
            self._replays[client] = (left - len(subjects), now)
        return subjects

    def unsubscribe(self, client: ClientLink, msg: Unsubscribe) -> None:
        """End a subscription (unknown sids are ignored)."""
        sub = client.subscriptions.pop(msg.sid, None)
        if sub is not None:
            self._remove(sub)

    def client_left(self, client: ClientLink) -> None:
        """A client went away: end its subscriptions, forget its replay allowance."""
        for sub in client.subscriptions.values():
            self._remove(sub)
        client.subscriptions.clear()
        self._replays.pop(client, None)

    def _add(self, sub: SubscriptionRecord) -> None:
        """Register ``sub`` in its connection's entry for its pattern (and its group)."""
        entries = self._entries.get(sub.link)
        if entries is None:
            entries = self._entries[sub.link] = {}
        entry = entries.get(sub.pattern)
        if entry is None:
            entry = _Entry(sub.link, sub.pattern)
            self._index.add(sub.pattern, entry)
            entries[sub.pattern] = entry
        if sub.queue is None:
            entry.sids.add(sub.sid)
        else:
            group_key = (sub.pattern, sub.queue)
            group = self._groups.get(group_key)
            if group is None:
                group = self._groups[group_key] = _QueueGroup(sub.queue, sub.pattern)
            group.add(sub)
            if entry.groups is None:
                entry.groups = {}
            entry.groups[group] = entry.groups.get(group, 0) + 1
        self._forget_routes()

    def _remove(self, sub: SubscriptionRecord) -> None:
        """Unregister ``sub`` (an entry or group left empty is dropped)."""
        entries = self._entries[sub.link]
        entry = entries[sub.pattern]
        if sub.queue is None:
            entry.sids.remove(sub.sid)
        else:
            group_key = (sub.pattern, sub.queue)
            group = self._groups[group_key]
            group.remove(sub)
            if not group.members:
                del self._groups[group_key]
            assert entry.groups is not None
            count = entry.groups.pop(group) - 1
            if count:
                entry.groups[group] = count
        if not (entry.sids or entry.groups):
            self._index.remove(sub.pattern, entry)
            del entries[sub.pattern]
            if not entries:
                del self._entries[sub.link]
        self._forget_routes()


def _pick(groups: list[_QueueGroup]) -> SubscriptionRecord:
    """The member whose turn it is among the members of ``groups`` (those of one queue
    group name that a subject matches: one per pattern, usually just one)."""
    first = groups[0]
    count = len(first.members) if len(groups) == 1 else sum(len(group.members) for group in groups)
    position = first.turn % count
    first.turn = position + 1
    for group in groups:
        members = group.members
        if position < len(members):
            break
        position -= len(members)
    return members[position]


def _send_one(link: Link, template: list[Any], sid: int) -> None:
    """Send ``link`` the Deliver ``template`` (a bundle item) to ``sid``, with its own mid;
    a message over the link's own frame limit is missed (delivery is at most once).

    The copy is the template's list with its mid and sid put in (the two fields after the
    tag, always there): 0.1 µs, where building it with ``Deliver.item`` takes 0.35 µs (of
    some 1.3 µs a Deliver costs in all, encoding and queueing included)."""
    item = template.copy()
    item[1] = link.next_mid()
    item[2] = sid
    try:
        link.send_item(item)
    except MessageTooLarge:
        pass


class _Delivery:
    """One published message on its way: the Delivers of it, each a copy of one bundle
    item with its own mid and sids, to each connection it is for.

    A Deliver's ``also`` goes in the item as an :class:`~protocol.Encoded` list, which the
    encoder copies as it is: a Deliver naming 10,000 sids encodes in 17 µs so, 0.4 ms
    from a list of ints (2-core development machine)."""

    __slots__ = ("_long", "_message", "template")

    def __init__(self, subject: str, payload: Any, headers: dict[str, str]) -> None:
        #: the Deliver to one sid, ``also`` left out
        self.template: list[Any] = _deliver_item(
            mid=0, sid=0, subject=subject, payload=payload, headers=headers
        )
        self._long: list[Any] | None = None  # with a place for ``also``, once needed
        self._message = (subject, payload, headers)

    def to_one(self, link: Link, sid: int) -> None:
        """Send ``link`` a Deliver to ``sid`` (missed if over its frame limit)."""
        _send_one(link, self.template, sid)

    def to_sids(self, link: Link, segments: list[tuple[int, bytes]]) -> None:
        """Send ``link`` a Deliver to the sids encoded in ``segments``."""
        self.to_all(link, _parts(segments, _per_deliver(segments)), segments)

    def to_all(self, link: Link, parts: Iterable[_Part], segments: list[tuple[int, bytes]]) -> None:
        """Send ``link`` the Delivers ``parts`` (of the sids encoded in ``segments``); one
        over its frame limit is sent again as smaller ones that fit (a message that does
        not fit it even for one sid is missed: delivery is at most once)."""
        done = 0  # the sids sent
        for sid, also, count in parts:
            try:
                self._send(link, sid, also)
            except MessageTooLarge as exc:
                if also is not None:
                    room = exc.limit - exc.size + len(also.data)
                    self._in_smaller_parts(link, segments, done, room)
                return
            done += 1 + count

    def _in_smaller_parts(
        self, link: Link, segments: list[tuple[int, bytes]], skip: int, room: int
    ) -> None:
        """Send ``link`` the sids of ``segments`` but the first ``skip`` in Delivers whose
        lists of sids take ``room`` bytes at most (what the link's frame limit leaves
        beside the rest of the Deliver); halve them while one is still too large."""
        widest = max(width for width, _ in segments)
        per = min(MAX_DELIVER_SIDS, max(0, (room - 16) // widest))  # (16: the list's head and sid)
        while True:
            for sid, also, count in _parts(segments, per, skip):
                try:
                    self._send(link, sid, also)
                except MessageTooLarge:
                    if also is None:
                        return  # over the link's limit even alone: it misses the message
                    per //= 2
                    break
                skip += 1 + count
            else:
                return

    def _send(self, link: Link, sid: int, also: Encoded | None) -> None:
        if also is None:
            item = self.template.copy()
        else:
            long = self._long
            if long is None:
                subject, payload, headers = self._message
                long = self._long = _deliver_item(
                    mid=0, sid=0, subject=subject, payload=payload, headers=headers, also=(0,)
                )
            item = long.copy()
            item[_ALSO] = also  # (an Encoded: the encoder writes its bytes as they are)
        item[1] = link.next_mid()
        item[2] = sid
        link.send_item(item)


def _parts(segments: list[tuple[int, bytes]], per: int, skip: int = 0) -> Iterator[_Part]:
    """The sids encoded in ``segments`` (see :meth:`_SidSet.segments`), but the first
    ``skip``, as Delivers that each name one sid and at most ``per`` more."""
    sid = -1  # (none yet)
    chunks: list[bytes] = []
    count = 0
    for width, data in segments:
        size = len(data) // width
        if skip >= size:
            skip -= size
            continue
        start, skip = skip, 0
        while start < size:
            if sid < 0:
                sid = _uint_at(data, start * width, width)
                start += 1
                if per:
                    continue
            else:
                take = min(per - count, size - start)
                chunks.append(data[start * width : (start + take) * width])
                count += take
                start += take
                if count < per:
                    continue
            yield sid, _encoded_list(count, chunks), count
            sid, chunks, count = -1, [], 0
    if sid >= 0:
        yield sid, _encoded_list(count, chunks), count


def _encoded_list(count: int, chunks: list[bytes]) -> Encoded | None:
    """The CBOR list of ``count`` items whose encodings are ``chunks`` end to end (None
    for none)."""
    if not count:
        return None
    head = _dumps(count)  # (an array's head is that of the uint, major type 4)
    return Encoded(b"".join([bytes((head[0] | 0x80,)), head[1:], *chunks]))


def _per_deliver(segments: list[tuple[int, bytes]]) -> int:
    """How many sids beside its own one Deliver of the sids in ``segments`` names: none
    (a Deliver each) for at most :data:`SEPARATE_DELIVERS`, else as many as may be."""
    total = sum(len(data) // width for width, data in segments)
    return 0 if total <= SEPARATE_DELIVERS else MAX_DELIVER_SIDS


def _segments_of(sids: list[int]) -> list[tuple[int, bytes]]:
    """``sids`` encoded, as :meth:`_SidSet.segments` gives them."""
    return [(len(code), code) for code in map(_dumps, sids)]


def _uint_at(data: bytes | bytearray, start: int, width: int) -> int:
    """The uint whose CBOR encoding, ``width`` bytes, starts at ``start`` of ``data``."""
    if width == 1:
        return data[start]
    return int.from_bytes(data[start + 1 : start + width], "big")
