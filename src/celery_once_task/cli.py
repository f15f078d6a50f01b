"""The operators' command line: list the locks, the live workers, and release a lock as its owner.

    celery-once-task locks   [--url URL] [--task NAME] [--type queue|running]
    celery-once-task workers [--url URL]
    celery-once-task release KEY --owner TOKEN [--url URL]

``release`` deletes a lock only if it still holds the owner token given (as
``locks`` prints it), so an operator can free a lock that outlived its task
without ever deleting one that a new owner took meanwhile. Listing walks the
keys with ``SCAN``, never ``KEYS``, so it is safe on a busy server.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Optional

import redis

from .connection import make_client, redact_url
from .keys import KEY_PREFIX
from .ownership import HEARTBEAT_PREFIX, RunningOwner
from .settings import DEFAULT_REDIS_URL, validate
from .store import LockStore

_BATCH = 500


@dataclass(frozen=True)
class Lock:
    key: str
    task_name: str
    digest: str
    lock_type: str
    owner: str
    ttl_ms: int

    def describe_owner(self) -> str:
        holder = RunningOwner.parse(self.owner) if self.lock_type == "running" else None
        if holder is None:
            return f"task {self.owner}"
        return f"task {holder.task_id}, attempt {holder.retries}, worker {holder.worker}"


def iter_locks(client: redis.Redis, task_name: Optional[str] = None, lock_type: Optional[str] = None) -> Iterator[Lock]:
    """Every lock on the server, read in batches of one pipeline each."""
    pattern = f"{KEY_PREFIX}:{task_name or '*'}:*:{lock_type or '*'}"
    keys: list[bytes] = []
    for key in client.scan_iter(match=pattern, count=_BATCH):
        keys.append(key)
        if len(keys) == _BATCH:
            yield from _read(client, keys)
            keys = []
    yield from _read(client, keys)


def _read(client: redis.Redis, keys: Sequence[bytes]) -> Iterator[Lock]:
    if not keys:
        return
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.get(key)
        pipe.pttl(key)
    replies = pipe.execute()
    for index, raw_key in enumerate(keys):
        value, ttl = replies[2 * index], replies[2 * index + 1]
        if value is None:  # expired or released since the scan
            continue
        name = raw_key.decode("utf-8", "replace")
        # The task name may itself contain ':', the digest and type never do.
        prefix_and_name, digest, lock_type = name.rsplit(":", 2)
        yield Lock(name, prefix_and_name[len(KEY_PREFIX) + 1:], digest, lock_type,
                   value.decode("utf-8", "replace"), int(ttl))


def iter_workers(client: redis.Redis) -> Iterator[tuple[str, int]]:
    """The worker instances whose heartbeat is alive, with its remaining TTL in ms."""
    for raw_key in client.scan_iter(match=f"{HEARTBEAT_PREFIX}:*", count=_BATCH):
        ttl = client.pttl(raw_key)
        if ttl > 0:
            yield raw_key.decode().split(":", 1)[1], int(ttl)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="celery-once-task", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("CELERY_ONCE_REDIS_URL", DEFAULT_REDIS_URL),
                        help="the lock store (default: $CELERY_ONCE_REDIS_URL or %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True)
    locks = commands.add_parser("locks", help="list the locks held, with owner and TTL")
    locks.add_argument("--task", help="only this task's locks (its full dotted name)")
    locks.add_argument("--type", choices=("queue", "running"), help="only queue or only running locks")
    commands.add_parser("workers", help="list the worker instances whose heartbeat is alive")
    release = commands.add_parser("release", help="delete a lock if it still holds the owner token given")
    release.add_argument("key")
    release.add_argument("--owner", required=True, help="the lock's value, as `locks` prints it")
    args = parser.parse_args(argv)

    try:
        url = validate("redis_url", args.url, label="--url")
        client = make_client(url)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        if args.command == "locks":
            count = 0
            for lock in iter_locks(client, args.task, args.type):
                count += 1
                print(f"{lock.key}\n    {lock.lock_type} lock, TTL {lock.ttl_ms / 1000:.0f}s, "
                      f"held by {lock.describe_owner()}\n    owner token: {lock.owner}")
            print(f"{count} lock(s)")
        elif args.command == "workers":
            workers = list(iter_workers(client))
            for instance, ttl in workers:
                print(f"{instance}  heartbeat expires in {ttl / 1000:.1f}s")
            print(f"{len(workers)} live worker instance(s)")
        else:
            if LockStore(client).release(args.key, args.owner):
                print(f"released {args.key}")
            else:
                print(f"not released: {args.key} does not hold that owner token (released, expired or re-taken)",
                      file=sys.stderr)
                return 1
    except redis.RedisError as exc:
        print(f"celery-once-task: cannot reach the lock store at {redact_url(url)}: {exc}", file=sys.stderr)
        return 2
    return 0
