"""The operators' commands: ``celery -A proj once ...`` and the standalone ``celery-once-task``.

    celery -A proj once locks   [--task NAME] [--type queue|running|slots|burst|unique] [--json]
    celery -A proj once show    KEY [--json]
    celery -A proj once clear   (--task NAME | --key KEY [--holder TASK_ID]) [--type ...] --yes [--json]
    celery -A proj once workers [--json]

A key with a ``running_limit`` is shown slot by slot: each slot's holder,
with the key's limit, the slots used and the calls waiting; ``--holder``
clears one slot of it. A debounced key shows its open burst (its task id,
the calls it covers, when it is due) and each burst whose execution runs. A
queue lock says whether its call is queued or runs (``queue_lock_until="end"``
holds it until the run ends); a ``unique_for`` window is a lock of type
``unique``. A key named by a ``lock_name`` shows that name where a task's
would be (``--task`` takes it too), and which task holds it.

``once`` is a Celery subcommand (the ``celery.commands`` entry point): it
reads the lock store the app is configured with, as a worker of that app
would (``configure()`` in the app module, ``app.conf.once_*``, Django's
``CELERY_ONCE_*`` once Celery's Django fix-up has set Django up), under the
``key_prefix`` it is configured with. The standalone ``celery-once-task``
(also ``python -m celery_once_task``) runs the same commands against
``--url`` and ``--prefix``, or an app given with ``-A``.

Exit codes: 0 done; 1 no such lock, ``clear`` without ``--yes``, or a lock
left alone because it changed hands; 2 the lock store cannot be reached.
What is read and cleared, and how, is ``locks``; this module only talks to
the operator. It never prints a password: URLs are shown redacted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Optional, Union
from urllib.parse import unquote, urlsplit

import click
import redis

from ..keys import KEY_PREFIX, RUNNING, SLOTS, THROTTLE
from ..protocols import WorkerApp
from ..settings import resolve
from ..settings_table import DEFAULT_REDIS_URL, validate
from ..store import client_for
from ..store.addresses import SCHEMES
from ..store.connection import Client, redact_url
from ..store.permissions import refusal
from . import locks as lockinfo
from . import printing

EXIT_NOT_DONE = 1
EXIT_UNREACHABLE = 2
EXIT_PERMISSION_DENIED = 3


@dataclass
class LockStoreTarget:
    """The lock store the commands work on (the click context's object)."""

    url: str
    options: Mapping[str, object] = field(default_factory=dict)
    #: The ``key_prefix`` the locks are written under.
    prefix: str = KEY_PREFIX

    @classmethod
    def for_app(cls, app: WorkerApp) -> LockStoreTarget:
        # As a worker does before it takes a lock: Django's fix-up runs
        # django.setup() here (so OnceTaskAppConfig serves CELERY_ONCE_*),
        # and the app's task modules run their configure() calls.
        app.loader.import_default_modules()
        settings = resolve(app)
        return cls(settings.redis_url, settings.redis_options, settings.key_prefix)

    def client(self) -> Client:
        return client_for(self.url, self.options)

    @contextmanager
    def reaching(self) -> Iterator[Client]:
        """The client; an unreachable store ends the command with one line and exit code 2, a refusal by
        its ACL with one line naming what the user lacks and exit code 3."""
        try:
            yield self.client()
        except (redis.RedisError, OSError) as exc:
            missing = refusal(exc)
            if missing is not None:
                click.echo(
                    f"permission denied: the ACL user lacks {missing}, at the lock store {redact_url(self.url)}: "
                    f"{_scrub(str(exc), self.url)}",
                    err=True,
                )
                raise click.exceptions.Exit(EXIT_PERMISSION_DENIED) from None
            click.echo(
                f"cannot reach the lock store {redact_url(self.url)} "
                f"at {lockinfo.address_of(self.url)}: {_scrub(str(exc), self.url)}",
                err=True,
            )
            raise click.exceptions.Exit(EXIT_UNREACHABLE) from None


def _scrub(text: str, url: str) -> str:
    """``text`` without the URL's password, should a message ever quote it."""
    password = urlsplit(url).password
    for secret in {password, unquote(password)} if password else ():
        text = text.replace(secret, "***")
    return text


def _target(ctx: click.Context) -> LockStoreTarget:
    target = ctx.find_object(LockStoreTarget)
    if target is None:  # pragma: no cover - both groups set it
        raise click.UsageError("no lock store chosen")
    return target


# -- the groups ------------------------------------------------------------------


@click.group(name="once")
@click.pass_context
def once(ctx: click.Context) -> None:
    """Locks of celery-once-task: list, show and clear them, and the workers that hold them."""
    ctx.obj = LockStoreTarget.for_app(ctx.obj.app)


@click.group(name="celery-once-task")
@click.option("--url", envvar="CELERY_ONCE_REDIS_URL",
              help=f"the lock store (default: $CELERY_ONCE_REDIS_URL, else {DEFAULT_REDIS_URL})")
@click.option("--prefix", envvar="CELERY_ONCE_KEY_PREFIX",
              help=f"the key_prefix of the locks (default: $CELERY_ONCE_KEY_PREFIX, else {KEY_PREFIX})")
@click.option("-A", "--app", "app_name", help="a Celery app: use the lock store and key_prefix it is configured with")
@click.pass_context
def main(ctx: click.Context, url: Optional[str], prefix: Optional[str], app_name: Optional[str]) -> None:
    """Locks of celery-once-task: list, show and clear them, and the workers that hold them."""
    if (url is not None or prefix is not None) and app_name is not None:
        raise click.UsageError("give --url and --prefix, or --app, not both")
    if app_name is not None:
        from celery.app.utils import find_app

        ctx.obj = LockStoreTarget.for_app(find_app(app_name))
        return
    url = url or DEFAULT_REDIS_URL
    try:
        target = validate("redis_url", url, label="--url")
    except ValueError:
        # Not the validation message: it quotes the URL as given, password and all.
        raise click.BadParameter(f"{redact_url(url)} is not a lock store URL: "
                                 f"one of {', '.join(f'{scheme}://' for scheme in SCHEMES)}",
                                 param_hint="--url") from None
    try:
        ctx.obj = LockStoreTarget(target, prefix=validate("key_prefix", prefix or KEY_PREFIX, label="--prefix"))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--prefix") from None


_type_option = click.option("--type", "lock_type", type=click.Choice(lockinfo.LOCK_TYPES),
                            help="only queue locks, running locks, the slots of limited keys, bursts, or "
                                 "unique_for windows")
_json_option = click.option("--json", "as_json", is_flag=True, help="print JSON")


# -- commands ----------------------------------------------------------------------


@click.command(name="locks")
@click.option("--task", help="only this task's locks (its full dotted name, or its lock_name)")
@_type_option
@_json_option
@click.pass_context
def locks_command(ctx: click.Context, task: Optional[str], lock_type: Optional[str], as_json: bool) -> None:
    """Every lock, with its owner and TTL."""
    target = _target(ctx)
    with target.reaching() as client:
        found = lockinfo.iter_locks(client, task, lock_type, prefix=target.prefix)
        if as_json:
            printing.echo_json_list(lock.as_dict() for lock in found)
            return
        count = 0
        for lock in found:
            count += 1
            click.echo(printing.describe(lock))
        click.echo(f"{count} lock(s) in {redact_url(target.url)}")


@click.command(name="show")
@click.argument("key")
@_json_option
@click.pass_context
def show_command(ctx: click.Context, key: str, as_json: bool) -> None:
    """One lock, in full (a limited key: each of its slots)."""
    target = _target(ctx)
    with target.reaching() as client:
        found = lockinfo.get_locks(client, key, target.prefix)
    slotted = lockinfo.parse_key(key, prefix=target.prefix) is not None and key.endswith(":slots")
    if as_json:
        shown: Union[list[lockinfo.LockDict], lockinfo.LockDict, None] = (
            [lock.as_dict() for lock in found] if slotted else (found[0].as_dict() if found else None)
        )
        click.echo(json.dumps(shown, indent=2))
    for index, lock in enumerate([] if as_json else found):
        if index:
            click.echo("")
        for label, value in printing.fields(lock):
            click.echo(f"{label + ':':<10} {value}")
    if not found:
        if not as_json:
            click.echo(f"no lock at {key}", err=True)
        ctx.exit(EXIT_NOT_DONE)


@click.command(name="clear")
@click.option("--task", help="the locks of this task (its full dotted name, or its lock_name)")
@click.option("--key", help="the lock at this key")
@click.option("--holder", help="with --key of a limited key: only the slot this task id holds")
@_type_option
@click.option("--yes", is_flag=True, help="delete them (without it, only say what would be deleted)")
@_json_option
@click.pass_context
def clear_command(
    ctx: click.Context, task: Optional[str], key: Optional[str], holder: Optional[str], lock_type: Optional[str],
    yes: bool, as_json: bool,
) -> None:
    """Delete the locks that match, each only if it still holds the value listed."""
    if (task is None) == (key is None):
        raise click.UsageError("give either --task NAME or --key KEY")
    if holder is not None and key is None:
        raise click.UsageError("--holder needs --key")
    target = _target(ctx)
    with target.reaching() as client:
        if key is not None:
            listed = [lock for lock in lockinfo.get_locks(client, key, target.prefix)
                      if lock_type in (None, lock.type) and holder in (None, lock.task_id)]
        else:
            listed = list(lockinfo.iter_locks(client, task, lock_type, prefix=target.prefix))
        listed = [lock for lock in listed if (lock.type != SLOTS or lock.slot is not None) and lock.type != THROTTLE]
        if not yes:
            _refuse(ctx, listed, as_json)
            return
        cleared = lockinfo.clear(client, listed, target.prefix)
    if as_json:
        click.echo(json.dumps({
            "deleted": [lock.as_dict() for lock in cleared.deleted],
            "changed_hands": [lock.as_dict() for lock in cleared.changed_hands],
            "gone": [lock.as_dict() for lock in cleared.gone],
        }, indent=2))
    else:
        for lock in cleared.deleted:
            click.echo(f"deleted {lock.key}{' slot' if lock.slot else ''} (held by {lock.describe_owner()})")
        for lock in cleared.changed_hands:
            click.echo(f"left alone {lock.key}: it changed hands since it was listed")
        for lock in cleared.gone:
            click.echo(f"already gone {lock.key}: released or expired since it was listed")
        click.echo(f"{len(cleared.deleted)} lock(s) deleted, {len(cleared.changed_hands)} left alone")
    if cleared.changed_hands:
        ctx.exit(EXIT_NOT_DONE)


def _refuse(ctx: click.Context, listed: list[lockinfo.Lock], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"deleted": [], "would_delete": [lock.as_dict() for lock in listed]}, indent=2))
    else:
        click.echo(f"would delete {len(listed)} lock(s):")
        for lock in listed:
            click.echo(printing.describe(lock))
        click.echo("nothing deleted: add --yes to delete them (each only if it still holds the value listed)")
    ctx.exit(EXIT_NOT_DONE)


@click.command(name="workers")
@_json_option
@click.pass_context
def workers_command(ctx: click.Context, as_json: bool) -> None:
    """The live worker instances: node name, heartbeat, and the running locks each holds."""
    target = _target(ctx)
    with target.reaching() as client:
        running = [*lockinfo.iter_locks(client, lock_type=RUNNING, prefix=target.prefix),
                   *lockinfo.iter_locks(client, lock_type=SLOTS, prefix=target.prefix)]
        workers = list(lockinfo.iter_workers(client, running, target.prefix))
    if as_json:
        click.echo(json.dumps([
            {**worker.as_dict(), "locks": [lock.as_dict() for lock in worker.locks]} for worker in workers
        ], indent=2))
        return
    for worker in workers:
        beat = "" if worker.beat_age is None else f", last beat {worker.beat_age:.1f}s ago"
        click.echo(f"{worker.worker or '(node name unknown)'}  instance {worker.instance}"
                   f"{'' if worker.pid is None else f'  pid {worker.pid}'}"
                   f"  heartbeat expires in {printing.duration(worker.ttl)}{beat}")
        for lock in worker.locks:
            click.echo(f"    {lock.key}  (task {lock.task_id}, attempt {lock.attempt}, {printing.age(lock.age)})")
    click.echo(f"{len(workers)} live worker instance(s)")
    orphans = [lock for lock in running if lock.alive is False]
    if orphans:
        click.echo(f"{len(orphans)} running lock(s) held by worker instances with no heartbeat: "
                   "see `once locks --type running`")


for _command in (locks_command, show_command, clear_command, workers_command):
    once.add_command(_command)
    main.add_command(_command)

