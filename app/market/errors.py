from __future__ import annotations

from app.core.errors import Conflict, InvalidInput, NotFound


class ProductNotFound(NotFound):
    code = "product_not_found"


class ProductCodeTaken(Conflict):
    code = "product_code_taken"


class InvalidProduct(InvalidInput):
    code = "invalid_product"


class OrderNotFound(NotFound):
    code = "order_not_found"


class OrderNotOpen(Conflict):
    """The order is already filled or cancelled."""

    code = "order_not_open"


class DuplicateClientOrderId(Conflict):
    code = "duplicate_client_order_id"


class NoReferencePrice(Conflict):
    """A market order needs a price band: the product has no reference price nor trade yet."""

    code = "no_reference_price"


class PriceOutsideBand(InvalidInput):
    code = "price_outside_band"


class OrderRejected(Conflict):
    """The matching engine refused the order (e.g. a post-only order that would cross)."""

    code = "order_rejected"


class NotACallProduct(Conflict):
    """A call was asked for a product that trades continuously."""

    code = "not_a_call_product"


class OrderNotForCall(InvalidInput):
    """A call product takes limit gtc/gtd orders only (as the TSE carbon market: limit orders
    only): market, ioc, fok and post-only orders make no sense in a call auction."""

    code = "order_not_for_call"


class AmendBelowFilled(Conflict):
    """The new quantity is not above what the order has already filled (cancel it instead)."""

    code = "amend_below_filled"


class AmendIncreaseNotSupported(Conflict):
    """A sell order's quantity cannot be increased (its credit hold cannot grow): place
    another order."""

    code = "amend_increase_not_supported"
