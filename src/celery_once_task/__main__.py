"""``python -m celery_once_task``: the standalone operators' command (see ``cli``)."""

from .ops.cli import main

if __name__ == "__main__":
    main(prog_name="celery-once-task")
