"""``python -m celery_once_task``: the operators' command line (see ``cli``)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
