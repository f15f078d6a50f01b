"""``python -m celery_once_task``: the operators' command line (see ``cli``)."""

from .cli import main

raise SystemExit(main())
