from __future__ import annotations

from typing import Any

from app.core.errors import Conflict, DomainError, Forbidden, InvalidInput, NotFound


class AuctionNotFound(NotFound):
    code = "auction_not_found"


class BidNotFound(NotFound):
    code = "bid_not_found"


class AuctionNotOpen(Conflict):
    code = "auction_not_open"


class BidNotActive(Conflict):
    code = "bid_not_active"


class TooManyBids(Conflict):
    """The bidder already has ``max_bids_per_bidder`` active bids in this auction."""

    code = "too_many_bids"


class BidderQuantityExceeded(Conflict):
    """The bidder's active bids, or its corporate group's (``scope: "group"``), would ask for
    more than ``max_bidder_quantity``."""

    code = "bidder_quantity_exceeded"


class OwnAuction(Forbidden):
    code = "own_auction"


class InvalidAuction(InvalidInput):
    code = "invalid_auction"


class InvalidBid(DomainError):
    """A bid that breaks the auction's bid format: 422 listing every reason."""

    status_code = 422
    code = "invalid_bid"

    def __init__(self, reasons: list[str], **extra: Any) -> None:
        errors = [{"loc": ["body"], "msg": r, "type": "value_error"} for r in reasons]
        super().__init__("; ".join(reasons), errors=errors, **extra)


class NotAuctionCreator(Forbidden):
    """Only the organisation that created an auction may close it."""

    code = "not_auction_creator"


class AuctionAlreadyClosed(Conflict):
    """The auction is already cleared and settled (or cancelled): a close has nothing to do."""

    code = "auction_already_closed"


class AuctionNotCleared(Conflict):
    """Results and the audit are published only once the auction is settled or cancelled."""

    code = "auction_not_cleared"


class AuctionSeriesNotFound(NotFound):
    code = "auction_series_not_found"


class ConsignmentClosed(Conflict):
    """Supply is final once bidding opens: consignments are taken only before then."""

    code = "consignment_closed"


class InvalidConsignment(InvalidInput):
    code = "invalid_consignment"
