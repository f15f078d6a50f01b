"""Drop-ins for the libraries a project comes from: a project changes its imports only.

``celery_once``       ``QueueOnce`` and ``AlreadyQueued``, as celery_once has them
``celery_singleton``  ``Singleton`` and ``DuplicateTaskError``, as celery-singleton has them

Each is a thin ``OnceTask`` subclass that sets this library's public options
from the peer's (docs/migrating.md has the mapping), and reads the peer's
settings off the Celery app's configuration (``settings.add_conf_reader``). A
migrated task keeps what every ``OnceTask`` has: leases, redelivery
protection, the running lock, ``celery once`` and the locks page. An option
or a setting that cannot be mapped is a ``ValueError`` naming the task (or the
setting) and the option.
"""
