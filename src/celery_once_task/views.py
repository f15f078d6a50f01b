"""Django only: the locks page, a read-only list of the locks for staff, with an owner-checked clear.

Mount it next to the admin, before ``admin.site.urls``::

    path("admin/once-locks/", include("celery_once_task.urls")),
    path("admin/", admin.site.urls),

Staff users (``is_staff``) see every lock with its owner, worker, liveness, age
and TTL -- and, for a key named by a ``lock_name``, which task holds it; for
a queue lock, whether its call is queued or runs (held until its run ends);
``unique_for`` windows as locks of their own. Users with the ``celery_once_task.clear_lock`` permission also get a
button per lock that clears it: a POST (with Django's CSRF check) naming the
key and the exact value listed, deleted only if the lock still holds that
value, so a lock that changed hands after the page was loaded is left alone.
The lock store and ``key_prefix`` are the ones the project's Celery app
uses; its URL is shown without its password.
"""

from __future__ import annotations

import itertools
from typing import Callable

import redis
from celery import current_app
from django.contrib import admin, messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.views.decorators.http import require_http_methods

from .models import CLEAR_PERMISSION
from .ops import locks as lockinfo
from .settings import resolve
from .settings_table import Settings
from .store import client_for
from .store.connection import redact_url
from .store.permissions import refusal
from .store.slots import slot_field

#: Rows shown at most: the page must stay quick with a million locks held.
MAX_ROWS = 500


def _lock_store() -> Settings:
    """The settings of the lock store the current Celery app is configured with."""
    return resolve(current_app._get_current_object())


def _locks_page(request: HttpRequest) -> HttpResponse:
    can_clear = request.user.has_perm(CLEAR_PERMISSION)
    settings = _lock_store()
    url, prefix = settings.redis_url, settings.key_prefix
    if request.method == "POST":
        if not can_clear:
            raise PermissionDenied
        return _clear(request, url, prefix)
    task = request.GET.get("task") or None
    lock_type = request.GET.get("type") if request.GET.get("type") in lockinfo.LOCK_TYPES else None
    context: dict[str, object] = {
        **admin.site.each_context(request),
        "title": "Celery once locks",
        # The admin's app list: of no use here, and empty for staff without model permissions.
        "is_nav_sidebar_enabled": False,
        "store": redact_url(url),
        "prefix": prefix,
        "can_clear": can_clear,
        "task": task or "",
        "type": lock_type or "",
        "max_rows": MAX_ROWS,
    }
    try:
        client = client_for(url, settings.redis_options)
        rows = list(itertools.islice(lockinfo.iter_locks(client, task, lock_type, prefix=prefix), MAX_ROWS + 1))
    except (redis.RedisError, OSError) as exc:
        context["denied"] = refusal(exc)
        context["unreachable"] = lockinfo.address_of(url)
        return render(request, "celery_once_task/locks.html", context, status=503)
    context["locks"] = rows[:MAX_ROWS]
    context["more"] = len(rows) > MAX_ROWS
    return render(request, "celery_once_task/locks.html", context)


#: Staff only (others go to the admin's login page); GET lists, POST clears.
locks_page: Callable[[HttpRequest], HttpResponse] = staff_member_required(
    require_http_methods(["GET", "POST"])(_locks_page)
)


def _clear(request: HttpRequest, url: str, prefix: str) -> HttpResponse:
    key = request.POST.get("key", "")
    value = request.POST.get("value", "")
    slot = request.POST.get("slot") or None
    parsed = lockinfo.parse_key(key, prefix=prefix)
    if parsed is None or (parsed[2] == "slots" and slot_field(slot or "") is None):
        return HttpResponse("not a celery-once-task lock key (or slot)", status=400, content_type="text/plain")
    try:
        outcome = lockinfo.clear_value(client_for(url, _lock_store().redis_options), key, value, slot, prefix)
    except (redis.RedisError, OSError) as exc:
        missing = refusal(exc)
        problem = (f"Permission denied: the lock store's ACL user lacks {missing}" if missing
                   else f"The lock store at {lockinfo.address_of(url)} cannot be reached")
        messages.error(request, f"{problem}: nothing cleared.", fail_silently=True)
        return HttpResponseRedirect(request.get_full_path())
    if outcome == lockinfo.DELETED:
        messages.success(request, f"Cleared {key}.", fail_silently=True)
    elif outcome == lockinfo.CHANGED_HANDS:
        messages.warning(request, f"Left {key} alone: it changed hands since the page was loaded.",
                         fail_silently=True)
    else:
        messages.info(request, f"{key} was already gone (released or expired).", fail_silently=True)
    return HttpResponseRedirect(request.get_full_path())
