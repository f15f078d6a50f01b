"""Refusals by the lock store's ACL: telling one from an outage, and naming what the user lacks.

A Redis user whose ACL rules lack a command or a key pattern the library needs
gets ``NOPERM`` replies: redis-py raises ``NoPermissionError`` for a command
sent by the client, and a plain ``ResponseError`` for a command refused inside
a script (Redis 7.0 words it "The user executing the script can't run this
command", naming the script's SHA1 but not the command). Neither is an outage:
trying again cannot help, and "unreachable" would send an operator to the
network. ``refusal`` reads such an error and says what the user lacks; for a
script that does not name the command, the commands the script may run.

The commands every script may run are read from the scripts' sources
(``script_commands``), so that the ACL rule the documentation gives can be
checked against every script of ``lua``, including those added later.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from typing import Optional

from . import lua
from .lua import Script

__all__ = ["lua_scripts", "refusal", "script_commands", "what_failed"]

_LUA_COMMAND = re.compile(r"""redis\.p?call\(\s*['"]([A-Za-z]+)['"]""")
_NAMED_COMMAND = re.compile(r"'([a-z][a-z|-]*)' command")
_SCRIPT_SHA = re.compile(r"script: ([0-9a-f]{40})")
#: How servers word a refusal by the ACL: the NOPERM reply, and its form inside a script (Redis 7.0).
_REFUSALS = ("NOPERM", "no permissions", "The user executing the script can't")


def lua_scripts() -> tuple[Script, ...]:
    """Every ``Script`` defined in the modules of ``lua``, whatever their names."""
    scripts: dict[str, Script] = {}
    for module_info in pkgutil.iter_modules(lua.__path__, f"{lua.__name__}."):
        module = importlib.import_module(module_info.name)
        for value in vars(module).values():
            if isinstance(value, Script):
                scripts[value.sha] = value
    return tuple(scripts.values())


def script_commands(script: Script) -> frozenset[str]:
    """The commands ``script`` may run (``redis.call``/``redis.pcall``), in lower case as ACL rules spell them."""
    return frozenset(name.lower() for name in _LUA_COMMAND.findall(script.source))


def refusal(error: BaseException) -> Optional[str]:
    """What the lock store's ACL user lacks, where ``error`` is an ACL refusal; None for any other error.

    The text reads after "the ACL user lacks": ``'hgetall' (add +hgetall to its rules)``.
    """
    text = str(error)
    if not any(marker in text for marker in _REFUSALS):
        return None
    named = _NAMED_COMMAND.search(text)
    if named is not None:
        command = named.group(1)
        return f"{command!r} (add +{command} to its rules)"
    sha = _SCRIPT_SHA.search(text)
    script = next((script for script in lua_scripts() if sha and script.sha == sha.group(1)), None)
    if "key" in text:
        return "a key pattern for one of the keys (see the key patterns of the ACL rules in the documentation)"
    if script is not None:
        commands = " ".join(f"+{command}" for command in sorted(script_commands(script)))
        return f"a command of the script {script.name} (it runs: {commands})"
    return f"a command ({text})"


def what_failed(error: BaseException) -> str:
    """How a log line names a failed lock operation's cause: an ACL refusal, or the store unreachable."""
    missing = refusal(error)
    return f"permission denied: the ACL user lacks {missing}" if missing else "the lock store is unreachable"
