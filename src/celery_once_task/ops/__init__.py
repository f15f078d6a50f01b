"""Operators' tools: reading and clearing locks (``locks``) and the ``celery once`` command line (``cli``)."""
