"""The ``/v1`` router: every domain's routes.

A request is matched against the routes in the order they were included, and under FastAPI's
included routers each route tried costs a few microseconds (twice: once to find the router,
once to find the route in it). The market's routes come first: placing an order is the
hottest request there is, and behind the other domains' routes its matching alone took
about 200 µs of a worker's CPU, against about 30 µs first (``bench/orders``). No two domains
share a path (no template of one matches another's path), so the order changes nothing else
(the OpenAPI document groups by tag).
"""

from fastapi import APIRouter

from app.accounts.router import router as accounts_router
from app.auction.router import router as auction_router
from app.ledger.router import router as ledger_router
from app.market.router import router as market_router
from app.offsets.router import public_router as public_offsets_router
from app.offsets.router import router as offsets_router

v1 = APIRouter(prefix="/v1")
v1.include_router(market_router)
v1.include_router(accounts_router)
v1.include_router(ledger_router)
v1.include_router(offsets_router)
v1.include_router(public_offsets_router)
v1.include_router(auction_router)
