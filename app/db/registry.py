"""Imports every model, so Alembic and the tests see the whole schema."""

from app.accounts import models as accounts_models  # noqa: F401
from app.auction import models as auction_models  # noqa: F401
from app.core import idempotency  # noqa: F401
from app.ledger import models as ledger_models  # noqa: F401
from app.market import models as market_models  # noqa: F401
from app.offsets import models as offsets_models  # noqa: F401
