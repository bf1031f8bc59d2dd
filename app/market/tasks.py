"""Order book tasks (listed in ``app.worker.app.TASK_MODULES`` as ``"app.market.tasks"``).

- ``market.expire_orders`` (every minute): close the GTD orders whose ``expires_at`` has come,
  with status ``expired``, through the cancel path (product lock, holds released, book change
  published): ``app.market.expiry.expire_due_orders``. Idempotent, and safe with several
  workers (also serialised by the task's ``lock``).
"""

from __future__ import annotations

from app.market.expiry import expire_due_orders
from app.worker.app import job_app
from app.worker.tasks import MAINTENANCE_QUEUE


@job_app.periodic(cron="* * * * *", periodic_id="market-expire-every-minute")
@job_app.task(
    name="market.expire_orders",
    queue=MAINTENANCE_QUEUE,
    queueing_lock="market.expire_orders",
    lock="market.expire_orders",
)
async def expire_orders(timestamp: int | None = None) -> int:
    """Every minute: expire the due GTD orders (``timestamp``: the scheduled tick)."""
    return await expire_due_orders()
