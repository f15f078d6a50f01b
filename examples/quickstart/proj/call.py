# proj/call.py
from .tasks import send_invoice

first = send_invoice.apply_async((42, "2026-11"), countdown=1)  # queued, to run in a second
again = send_invoice.delay(42, "2026-11")  # the same call while the first is queued: dropped
other = send_invoice.delay(43, "2026-11")  # other arguments: a call of its own

print("again:", again)
print("first:", first.get(timeout=10))
print("other:", other.get(timeout=10))
