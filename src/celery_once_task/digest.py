"""A call's digest: the canonical form of its arguments, hashed (the key format is ``keys``).

A call's digest must be the same at publish time and on the worker, after the
arguments went through a serializer. So the digest is taken over a canonical
form of the call rather than over the raw arguments:

* arguments are bound to the task's signature, so ``f(1, b=2)``, ``f(a=1,
  b=2)`` and ``f(1)`` (with ``b=2`` the default) are one call, and ``self`` of
  ``bind=True`` tasks is not part of it;
* tuples and lists are the same sequence (JSON turns one into the other);
* dict key order does not matter; keys that JSON would turn into strings are
  turned into strings here too;
* datetime, date, time, Decimal, UUID and bytes are tagged with their type,
  as kombu's JSON serializer keeps them typed.

Anything else cannot be put in canonical form and is refused with a
``TypeError`` that names the task and the argument.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import hashlib
import inspect
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Callable

DIGEST_LENGTH = 16
_DIGEST = re.compile(f"[0-9a-f]{{{DIGEST_LENGTH}}}")


#: ``json.dumps(..., sort_keys=True, separators=(",", ":"), ensure_ascii=False)``, made once.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def well_formed_digest(value: object) -> bool:
    """Whether ``value`` is a digest as this module makes them (a header may carry anything)."""
    return isinstance(value, str) and _DIGEST.fullmatch(value) is not None


def signature_of(run: Callable[..., Any]) -> inspect.Signature | None:
    """The signature the arguments are bound to; None where there is none."""
    try:
        return inspect.signature(run)
    except (TypeError, ValueError):  # builtins and C callables have none
        return None


Select = Callable[[dict[str, Any]], Mapping[str, Any]]


def call_digest(
    task_name: str,
    signature: inspect.Signature | None,
    args: Sequence[Any] | None,
    kwargs: Mapping[str, Any] | None,
    *,
    strict_signature: bool = True,
    select: Select | None = None,
) -> str:
    """First 16 hex characters of the SHA-256 of the call's canonical form."""
    if select is None and signature is not None:
        values = args if type(args) is tuple else tuple(args or ())
        kinds = (*map(type, values), *map(type, kwargs.values())) if kwargs else tuple(map(type, values))
        if _SCALARS.issuperset(kinds):
            return _scalar_digest(task_name, signature, values, kwargs or {}, kinds, strict_signature)
    payload = canonical_call(task_name, signature, args, kwargs, strict_signature=strict_signature, select=select)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:DIGEST_LENGTH]


#: Exact types whose equal values have one canonical form (unlike ``1 == 1.0 == True``).
_SCALARS = frozenset((str, int, type(None)))

#: Digests of recent calls whose arguments are all strings, ints or None, by
#: task, signature and arguments as given, with their exact types. A call
#: repeated while its copy is queued (the duplicate a lock exists for) skips
#: its canonical form.
_digests: dict[tuple[Any, ...], tuple[inspect.Signature, str]] = {}
_DIGESTS_KEPT = 1024
#: Calls whose canonical form is longer are not kept: the memo must not hold large arguments alive.
_KEPT_PAYLOAD = 1024


def _scalar_digest(
    task_name: str,
    signature: inspect.Signature,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    kinds: tuple[type, ...],
    strict_signature: bool,
) -> str:
    """``call_digest`` of a call whose values are all str, int or None: kept, or made quickly where it can be.

    The signature is in the memo's key by identity and checked on a hit
    against the one kept with the digest: a task redefined under the same
    name gets its own.
    """
    memo = (task_name, id(signature), args, tuple(kwargs.items()) if kwargs else (), kinds)
    kept = _digests.get(memo)
    if kept is not None and kept[0] is signature:
        return kept[1]
    payload = _scalar_call(signature, args, kwargs)
    if payload is None:
        payload = canonical_call(task_name, signature, args, kwargs, strict_signature=strict_signature)
    digest = hashlib.sha256(payload.encode("utf-8")).hexdigest()[:DIGEST_LENGTH]
    if len(payload) <= _KEPT_PAYLOAD:
        if len(_digests) >= _DIGESTS_KEPT:
            _digests.clear()
        _digests[memo] = (signature, digest)
    return digest


def _scalar_call(signature: inspect.Signature, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str | None:
    """``canonical_call`` of a call whose values are all str, int or None, where it is quick to make; else None.

    Bound to a plain signature whose defaults are JSON scalars too, every
    value is its own canonical form: the bound arguments are encoded as they
    are, to the same JSON. A new call on the publish path is mostly this.
    """
    plain = _plain_of(signature)
    if plain is None or not plain.scalar_defaults:
        return None
    bound = _quick_bind(signature, args, kwargs)
    return None if bound is None else _ENCODER.encode(bound)


def canonical_call(
    task_name: str,
    signature: inspect.Signature | None,
    args: Sequence[Any] | None,
    kwargs: Mapping[str, Any] | None,
    *,
    strict_signature: bool = True,
    select: Select | None = None,
) -> str:
    """The call as canonical JSON: bound arguments by name, in signature order.

    ``select`` picks the arguments that form the key from the bound ones
    (``lock_args``); the others need no canonical form.
    """
    args = tuple(args or ())
    kwargs = dict(kwargs or {})
    bound = _bind(task_name, signature, args, kwargs, strict_signature)
    chosen = bound if select is None else select(bound)
    canonical = {name: _canonical(task_name, name, value) for name, value in chosen.items()}
    return _ENCODER.encode(canonical)


def check_lock_args(task_name: str, signature: inspect.Signature | None, lock_args: Sequence[str]) -> None:
    """Raise ``ValueError`` naming the task and the argument if ``lock_args`` names one the task has not."""
    if isinstance(lock_args, str) or not all(isinstance(name, str) for name in lock_args):
        raise ValueError(f"{task_name}: lock_args must be a list of argument names, got {lock_args!r}")
    if signature is None:
        raise ValueError(f"{task_name}: lock_args needs a task whose signature can be read")
    for name in lock_args:
        if name not in signature.parameters:
            known = ", ".join(signature.parameters) or "none"
            raise ValueError(f"{task_name}: lock_args names {name!r}, which is not an argument of the task "
                             f"(its arguments: {known})")


def _bind(
    task_name: str,
    signature: inspect.Signature | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    strict_signature: bool,
) -> dict[str, Any]:
    if signature is None:
        return {"*args": list(args), "**kwargs": kwargs}
    quick = _quick_bind(signature, args, kwargs)
    if quick is not None:
        return quick
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        if strict_signature:
            raise TypeError(f"{task_name}: the arguments do not match the task's signature: {exc}") from None
        # Celery lets tasks with typing=False take arguments their signature
        # does not declare; they are still one call per exact spelling.
        return {"*args": list(args), "**kwargs": kwargs}
    bound.apply_defaults()
    return dict(bound.arguments)


class _Plain:
    """A signature of plain parameters (no ``*args``, ``**kwargs``, keyword- or positional-only)."""

    __slots__ = ("defaults", "names", "scalar_defaults")

    def __init__(self, signature: inspect.Signature) -> None:
        self.names = tuple(signature.parameters)
        self.defaults = {
            name: parameter.default
            for name, parameter in signature.parameters.items()
            if parameter.default is not inspect.Parameter.empty
        }
        #: Whether every default is its own canonical form (see ``_canonical``).
        self.scalar_defaults = all(
            value is None or isinstance(value, (bool, str, int, float)) for value in self.defaults.values()
        )


#: id(signature) -> (signature, its plain form or None): signatures are kept per task class for good.
_plain: dict[int, tuple[inspect.Signature, _Plain | None]] = {}


def _plain_of(signature: inspect.Signature) -> _Plain | None:
    """The plain form of ``signature``, made once per signature; None where it is not plain."""
    known = _plain.get(id(signature))
    if known is None or known[0] is not signature:
        kinds = {parameter.kind for parameter in signature.parameters.values()}
        known = _plain[id(signature)] = (
            signature, _Plain(signature) if kinds <= {inspect.Parameter.POSITIONAL_OR_KEYWORD} else None
        )
    return known[1]


def _quick_bind(
    signature: inspect.Signature, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> dict[str, Any] | None:
    """``signature.bind(...).arguments`` with defaults applied, for plain signatures; None where it cannot say.

    Most tasks take plain parameters, and binding them is a zip; anything
    else (or a call that does not fit) goes the general way, which also
    words the error.
    """
    plain = _plain_of(signature)
    if plain is None:
        return None
    names = plain.names
    if len(args) > len(names):
        return None
    bound = dict(zip(names, args))
    for name, value in kwargs.items():
        if name in bound or (name not in plain.defaults and name not in names):
            return None
        bound[name] = value
    if len(bound) < len(names):
        for name in names:
            if name not in bound:
                if name not in plain.defaults:
                    return None
                bound[name] = plain.defaults[name]
    return bound


def _canonical(task_name: str, path: str, value: object) -> object:
    # bool before int: bool is an int subclass and JSON keeps them apart.
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, (list, tuple)):
        return [_canonical(task_name, f"{path}[{index}]", item) for index, item in enumerate(value)]
    if isinstance(value, Mapping):
        return {
            _canonical_key(task_name, path, key): _canonical(task_name, f"{path}[{key!r}]", item)
            for key, item in value.items()
        }
    tagged = _tagged(value)
    if tagged is not None:
        return tagged
    raise TypeError(
        f"{task_name}: argument {path!r} of type {type(value).__name__} has no canonical form "
        "for the lock key; pass JSON types, datetime, date, time, Decimal, UUID or bytes"
    )


def _canonical_key(task_name: str, path: str, key: object) -> str:
    if isinstance(key, str):
        return key
    # JSON turns these keys into strings the way json.dumps spells them.
    if key is None or isinstance(key, (bool, int, float)):
        return json.dumps(key)
    raise TypeError(
        f"{task_name}: argument {path!r} has a dict key of type {type(key).__name__}; "
        "only str, int, float, bool and None keys survive serialization"
    )


def _tagged(value: object) -> dict[str, str] | None:
    # datetime before date: datetime is a date subclass.
    if isinstance(value, datetime.datetime):
        return {"__datetime__": value.isoformat()}
    if isinstance(value, datetime.date):
        return {"__date__": value.isoformat()}
    if isinstance(value, datetime.time):
        return {"__time__": value.isoformat()}
    if isinstance(value, decimal.Decimal):
        return {"__decimal__": str(value)}
    if isinstance(value, uuid.UUID):
        return {"__uuid__": str(value)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"__bytes__": base64.b64encode(bytes(value)).decode("ascii")}
    return None
