"""Expiry of GTD orders, as the ``market.expire_orders`` task runs it (``app.market.tasks``).

Kept apart from the task declaration so that it can be called (tests, scripts) without
registering the periodic task on ``job_app``. Runs inside ``run_worker`` or
``use_sessionmaker`` (it opens its transactions with ``job_session()``).
"""

from __future__ import annotations

import structlog

from app.core.time import utc_now
from app.market import service as market_service
from app.worker.resources import job_session

log = structlog.get_logger()


async def expire_due_orders() -> int:
    """Expire every GTD order due now, one transaction per product; return how many.

    Each order is expired exactly once however many copies run at once (the product lock and
    the status check under it, in ``market_service.expire_product_orders``); a run with
    nothing due changes nothing.
    """
    now = utc_now()
    async with job_session() as session:
        products = await market_service.products_with_due_orders(session, now)
    expired = 0
    for product_id in products:
        async with job_session() as session:
            orders = await market_service.expire_product_orders(session, product_id, now)
        expired += len(orders)
        if orders:
            log.info(
                "market.orders_expired",
                product_id=str(product_id),
                order_ids=[str(o.id) for o in orders],
            )
    return expired
