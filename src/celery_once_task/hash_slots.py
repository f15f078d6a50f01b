"""Redis Cluster's hash slots: the slot a key is stored in, and short texts that hash to a given slot.

The keys one script touches must share a hash slot on a Redis Cluster. A key
is put in another key's slot by a hash tag (``{...}``) whose text hashes to
that slot: ``keys`` spells a companion key's tag with these, ``record_keys``
a finished record's. The arithmetic is Redis's own, so a key's slot is known
without asking the store.
"""

from __future__ import annotations

import binascii
import itertools
import string

__all__ = ["hashed_part", "short_tag_of_slot", "slot_of", "tag_of_slot"]


def slot_of(key: str) -> int:
    """The Redis Cluster hash slot of ``key`` (CRC16/XMODEM of its hashed part, modulo 16384)."""
    return binascii.crc_hqx(hashed_part(key).encode("utf-8"), 0) % 16384


def hashed_part(key: str) -> str:
    """What Redis Cluster hashes of a key: the first ``{...}`` with something inside, else the whole key."""
    start = key.find("{")
    if start != -1:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1:end]
    return key


_slot_tags: dict[int, str] = {}
#: The shortest alphanumeric text of each slot (``short_tag_of_slot``), made at its first use.
_short_tags: list[str] = []


def short_tag_of_slot(slot: int) -> str:
    """The shortest alphanumeric text that hashes to ``slot``: one to three characters cover all 16384 slots."""
    if not _short_tags:
        table: dict[int, str] = {}
        alphabet = string.digits + string.ascii_lowercase + string.ascii_uppercase
        for length in (1, 2, 3):  # about 0.1 s, once per process
            for letters in itertools.product(alphabet, repeat=length):
                candidate = "".join(letters)
                table.setdefault(binascii.crc_hqx(candidate.encode("ascii"), 0) % 16384, candidate)
        _short_tags.extend(table[index] for index in range(16384))
    return _short_tags[slot]


def tag_of_slot(slot: int) -> str:
    """A short text that hashes to ``slot`` (made once per slot)."""
    tag = _slot_tags.get(slot)
    number = 0
    while tag is None:
        candidate = str(number)
        if slot_of(candidate) == slot:
            tag = _slot_tags[slot] = candidate
        number += 1
    return tag
