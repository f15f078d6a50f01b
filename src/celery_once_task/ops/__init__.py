"""Operators' tools: the lock API (``locks``, over ``rows``, ``values``, ``listing``, ``workers``) and the commands
(``cli``, which prints with ``printing``)."""
