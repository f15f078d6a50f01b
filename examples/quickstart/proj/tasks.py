# proj/tasks.py
from celery_once_task import OnceTask

from .celery import app


@app.task(base=OnceTask)
def send_invoice(customer_id, month):
    return f"invoice {month} sent to {customer_id}"
