"""The ``/v1`` API: every domain's routes, each domain's router included on the application
under the ``/v1`` prefix.

A request is matched against the routes in the order they were included, and under FastAPI's
included routers each route tried costs a few microseconds (twice: once to find the router,
once to find the route in it), with no short cut on the prefix. So:

- The domains' routers are included on the application directly, not through a ``/v1``
  router of their own: one level of that matching fewer for every request.
- The market's routes come first: placing an order is the hottest request there is, and
  behind the other domains' routes its matching alone took about 200 µs of a worker's CPU,
  against about 30 µs first (``bench/orders``). No two domains share a path (no template of
  one matches another's path), so the order changes nothing else (the OpenAPI document
  groups by tag).
"""

from fastapi import APIRouter, FastAPI

from app.accounts.router import router as accounts_router
from app.auction.router import router as auction_router
from app.ledger.router import router as ledger_router
from app.market.router import router as market_router
from app.offsets.router import public_router as public_offsets_router
from app.offsets.router import router as offsets_router

PREFIX = "/v1"

ROUTERS: tuple[APIRouter, ...] = (
    market_router,
    accounts_router,
    ledger_router,
    offsets_router,
    public_offsets_router,
    auction_router,
)


def include_v1(app: FastAPI) -> None:
    for router in ROUTERS:
        app.include_router(router, prefix=PREFIX)
