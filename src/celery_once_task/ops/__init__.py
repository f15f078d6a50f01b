"""Operators' tools: the lock API (``locks``, over ``rows``, ``listing``, ``workers``) and the commands (``cli``)."""
