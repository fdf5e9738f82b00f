"""The Celery app: a redis broker and result backend (REDIS_URL), one task that fetches N
bytes from the backend (backend_call.py) and returns who did it."""

from __future__ import annotations

import os

from backend_call import fetch
from celery import Celery

app = Celery("celery_app", broker=os.environ["REDIS_URL"], backend=os.environ["REDIS_URL"])
app.conf.update(worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)


@app.task
def fetch_bytes(n: int) -> dict[str, object]:
    body, backend = fetch(n)
    return {"pid": os.getpid(), "backend": backend, "size": len(body)}
