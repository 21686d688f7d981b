"""The README demo: a worker that squares numbers, and a client that uses it.

Run the cluster (leader + 4 worker processes) in one terminal::

    python -m actors.cluster --worker examples.square:Square=4

and the client in another::

    python -m examples.square
"""

from __future__ import annotations

import sys

import trio

from actors import Client, ClientError, Job, Worker


class Square(Worker):
    """Squares ``payload["n"]``; also serves every subject under ``math.common.``."""

    subjects = ["math.square", "math.common.>"]  # several patterns allowed
    concurrency = 4  # credit granted to the leader

    async def handle(self, job: Job) -> dict:
        n = job.payload["n"]
        await job.progress(0.5)  # optional progress / keeps the ack alive
        return {"square": n * n}


async def main(url: str = "tcp://127.0.0.1:7700") -> list[dict]:
    """Submit one job, then map over 100, then publish an event; return what came back."""
    async with Client.connect(url) as client:
        first = await client.submit("math.square", {"n": 7}, qos=1, timeout=5)
        print("7 squared:", first)
        payloads = ({"n": i} for i in range(100))
        mapped = [res async for res in client.map("math.square", payloads, limit=64)]
        print(f"mapped {len(mapped)} jobs; sum of squares = {sum(r['square'] for r in mapped)}")
        await client.publish("events.order.created", {"id": 1})  # broadcast, qos 0
        return [first, *mapped]


if __name__ == "__main__":
    try:
        trio.run(main, *sys.argv[1:2])
    except ClientError as exc:  # no cluster, no worker for math.square...: say why, briefly
        sys.exit(f"examples.square: {exc}")
