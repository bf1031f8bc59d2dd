"""Order book tasks (listed in ``app.worker.app.TASK_MODULES`` as ``"app.market.tasks"``).

- ``market.expire_orders`` (every minute): close the GTD orders whose ``expires_at`` has come,
  with status ``expired``, through the cancel path (product lock, holds released, book change
  published): ``app.market.expiry.expire_due_orders``. Idempotent, and safe with several
  workers (also serialised by the task's ``lock``).
- ``market.run_calls`` (every minute): run each call product's latest due call auction that has
  not run (``app.market.calls.run_due_calls``): exactly once per product and call time however
  many workers run it (a ``market_call_runs`` row, UNIQUE per product and scheduled time,
  written under the product lock in the call's transaction).
"""

from __future__ import annotations

from app.market.calls import run_due_calls
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


@job_app.periodic(cron="* * * * *", periodic_id="market-calls-every-minute")
@job_app.task(
    name="market.run_calls",
    queue=MAINTENANCE_QUEUE,
    queueing_lock="market.run_calls",
    lock="market.run_calls",
)
async def run_calls(timestamp: int | None = None) -> int:
    """Every minute: run the due call auctions; return how many ran."""
    return len(await run_due_calls())
