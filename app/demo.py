"""Demo data: a few organisations of each kind, their API keys, yen to trade with, and
credits: government-held energy-saving credits to tender and municipal forest credits to sell.

Loaded once per database (it is skipped when the demo organisations exist). The keys are shown
once and also written to ``<data_dir>/demo-keys.json`` (mode 600) so a restart can find them.
"""

from __future__ import annotations

import json
import os
from datetime import date

import structlog
import typer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import service as accounts_service
from app.accounts.models import Organization, OrganizationKind, Scope
from app.accounts.schemas import ApiKeyCreate, OrganizationCreate
from app.config import get_settings
from app.db.session import create_engine, create_sessionmaker, session_scope
from app.ledger import service as ledger_service
from app.offsets import service as offsets_service
from app.offsets.models import Category
from app.offsets.schemas import IssuanceCreate, ProjectCreate

log = structlog.get_logger()

DEMO_ORGS: list[tuple[OrganizationCreate, list[Scope], int]] = [
    (
        OrganizationCreate(name="J-Credit Secretariat (demo)", kind=OrganizationKind.government),
        [Scope.read, Scope.auctioneer, Scope.transfer, Scope.keys],
        0,
    ),
    (
        OrganizationCreate(
            name="Sakura Foods K.K. (demo)",
            kind=OrganizationKind.company,
            prefecture="13",
            corporate_number="7000012050002",
            group="Sakura Holdings",
        ),
        [Scope.read, Scope.trade, Scope.bid, Scope.retire, Scope.transfer, Scope.keys],
        50_000_000,
    ),
    (
        OrganizationCreate(
            name="Rikuzentakata City (demo)", kind=OrganizationKind.municipality, prefecture="03"
        ),
        [Scope.read, Scope.trade, Scope.bid, Scope.retire, Scope.transfer, Scope.keys],
        10_000_000,
    ),
    (
        OrganizationCreate(
            name="Kumamoto Forest Co-op (demo)", kind=OrganizationKind.seller, prefecture="43"
        ),
        [Scope.read, Scope.trade, Scope.transfer, Scope.keys],
        1_000_000,
    ),
]


async def _issue_demo_credits(
    session: AsyncSession, *, secretariat: Organization, forest_owner: Organization
) -> None:
    """Credits to trade, tender and retire: government-held energy-saving credits for the
    secretariat's tenders, and municipal forest credits for the forest co-op to sell."""
    for owner, name, methodology, category, prefecture, quantity in (
        (
            secretariat,
            "Subsidy programme: LED retrofits (demo)",
            "EN-S-001",
            "energy_saving",
            "13",
            20_000,
        ),
        (forest_owner, "Aso municipal forest thinning (demo)", "FO-001", "forest", "43", 5_000),
    ):
        project = await offsets_service.create_project(
            session,
            ProjectCreate(
                name=name,
                owner_organization_id=owner.id,
                methodology=methodology,
                category=Category(category),
                prefecture=prefecture,
            ),
        )
        await offsets_service.issue(
            session,
            IssuanceCreate(
                project_id=project.id,
                holder_organization_id=owner.id,
                quantity=quantity,
                monitoring_period_start=date(2024, 4, 1),
                monitoring_period_end=date(2025, 3, 31),
                labels=["removal"] if category == "forest" else [],
            ),
        )


async def load_demo(url: str, *, announce: bool = False) -> dict[str, str]:
    settings = get_settings()
    keys_file = settings.data_dir / "demo-keys.json"
    engine = create_engine(settings, url)
    try:
        sessionmaker = create_sessionmaker(engine)
        async with session_scope(sessionmaker) as session:
            names = [org.name for org, _, _ in DEMO_ORGS]
            existing = (
                (
                    await session.execute(
                        select(Organization.name).where(Organization.name.in_(names))
                    )
                )
                .scalars()
                .all()
            )
            if existing:
                if announce:
                    typer.echo(f"Demo data already loaded; its API keys are in {keys_file}")
                return {}
            admin = accounts_service.admin_principal()
            keys: dict[str, str] = {}
            orgs = []
            for data, scopes, yen in DEMO_ORGS:
                org = await accounts_service.create_organization(session, data)
                orgs.append(org)
                _, secret = await accounts_service.create_api_key(
                    session, admin, org.id, ApiKeyCreate(name="demo", scopes=scopes)
                )
                keys[org.name] = secret
                if yen:
                    await ledger_service.record_deposit(
                        session, org.id, yen, "demo-opening-balance"
                    )
            await _issue_demo_credits(session, secretariat=orgs[0], forest_owner=orgs[3])
    finally:
        await engine.dispose()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    keys_file.write_text(json.dumps(keys, indent=2, ensure_ascii=False) + "\n")
    os.chmod(keys_file, 0o600)
    if announce:
        typer.echo("Demo data loaded. API keys (shown once; also saved to " + str(keys_file) + "):")
        for name, secret in keys.items():
            typer.echo(f"  {name}: {secret}")
        typer.echo(
            "Administrator key: the value of TANSO_ADMIN_KEY (development default in app/config.py)"
        )
    log.info("demo.loaded", organizations=len(keys))
    return keys
