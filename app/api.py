"""The ``/v1`` router: every domain's routes."""

from fastapi import APIRouter

from app.accounts.router import router as accounts_router
from app.auction.router import router as auction_router
from app.ledger.router import router as ledger_router
from app.market.router import router as market_router
from app.offsets.router import public_router as public_offsets_router
from app.offsets.router import router as offsets_router

v1 = APIRouter(prefix="/v1")
v1.include_router(accounts_router)
v1.include_router(ledger_router)
v1.include_router(offsets_router)
v1.include_router(public_offsets_router)
v1.include_router(auction_router)
v1.include_router(market_router)
