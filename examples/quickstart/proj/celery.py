# proj/celery.py
import os

from celery import Celery

from celery_once_task import OnceTaskUnlockBootStep, configure, setup_once_task_signals

# One Redis for the broker, the results and the locks (each may have its own).
REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")

app = Celery("proj", broker=REDIS_URL, backend=REDIS_URL, include=["proj.tasks"])

configure(redis_url=REDIS_URL)             # where the locks live
setup_once_task_signals()                  # release the locks of revoked tasks
app.steps["worker"].add(OnceTaskUnlockBootStep)  # renew running locks, free them at shutdown
