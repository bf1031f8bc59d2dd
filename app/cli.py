"""The ``tanso`` command."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Annotated

import typer

from app.config import get_settings
from app.core.logging import configure_logging, configure_logging_from
from app.db.runtime import stop_embedded

app = typer.Typer(help="Tanso: J-Credit marketplace and tender auctions.", no_args_is_help=True)
ledger_app = typer.Typer(help="Ledger maintenance.", no_args_is_help=True)
app.add_typer(ledger_app, name="ledger")
claims_app = typer.Typer(help="Carbon-offset claims.", no_args_is_help=True)
app.add_typer(claims_app, name="claims")
auction_app = typer.Typer(help="Sealed-bid auctions.", no_args_is_help=True)
app.add_typer(auction_app, name="auction")


def _prepare_database() -> str:
    """The database URL, with the embedded server started if none is configured, migrated."""
    from app.db.runtime import resolve_database_url, upgrade_to_head

    url = resolve_database_url()
    upgrade_to_head(url)
    return url


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="uvicorn worker processes.")] = 1,
    demo: Annotated[
        bool | None,
        typer.Option(help="Load demo data (default: only on the embedded database)."),
    ] = None,
    worker: Annotated[
        bool,
        typer.Option(help="Run the job runner in each API process (off: run `tanso worker`)."),
    ] = True,
) -> None:
    """Migrate the database (starting the embedded one if none is configured) and serve the API."""
    import uvicorn

    settings = get_settings()
    configure_logging_from(settings)
    embedded = settings.database.url is None
    # uvicorn re-raises SIGTERM after a graceful shutdown; make that an ordinary exit so the
    # embedded server is stopped below.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        url = _prepare_database()
        if demo if demo is not None else embedded:
            from app.demo import load_demo

            asyncio.run(load_demo(url, announce=True))
        # Worker processes attach to this server through the environment; this process owns it.
        os.environ["TANSO_DATABASE__URL"] = url
        os.environ["TANSO_WORKER_IN_PROCESS"] = "true" if worker else "false"
        get_settings.cache_clear()
        uvicorn.run(
            "app.main:app_factory",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_config=None,
            proxy_headers=True,
        )
    finally:
        stop_embedded()


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@app.command()
def migrate() -> None:
    """Bring the database schema to the latest migration."""
    settings = get_settings()
    configure_logging_from(settings)
    try:
        _prepare_database()
    finally:
        stop_embedded()
    typer.echo("database migrated to head")


@app.command()
def demo() -> None:
    """Load demo organisations, API keys and balances, and print the keys."""
    from app.demo import load_demo

    settings = get_settings()
    configure_logging_from(settings)
    try:
        asyncio.run(load_demo(_prepare_database(), announce=True))
    finally:
        stop_embedded()


@ledger_app.command("verify")
def ledger_verify() -> None:
    """Recompute every balance from the postings and check every ledger and registry
    invariant (serial partition, blocks against balances, claims within retirements);
    exit 1 on any violation."""
    from app.ledger.verify import run_checks
    from app.offsets.verify import run_registry_checks

    settings = get_settings()
    configure_logging(json=settings.log_json, level="WARNING")
    url = _prepare_database()

    async def main() -> bool:
        from app.db.session import create_engine, create_sessionmaker

        engine = create_engine(settings, url)
        try:
            async with create_sessionmaker(engine)() as session:
                results = await run_checks(session) + await run_registry_checks(session)
        finally:
            await engine.dispose()
        for result in results:
            mark = "ok  " if result.ok else "FAIL"
            typer.echo(f"{mark} {result.name}: {result.description} ({result.checked} checked)")
            for violation in result.violations:
                typer.echo(f"       violation: {violation}")
        bad = [r for r in results if not r.ok]
        typer.echo(
            f"ledger verify: {len(results) - len(bad)} of {len(results)} checks passed"
            + ("" if not bad else f"; {len(bad)} failed")
        )
        return not bad

    try:
        ok = asyncio.run(main())
    finally:
        stop_embedded()
    if not ok:
        raise typer.Exit(code=1)


@app.command()
def worker(
    concurrency: Annotated[
        int, typer.Option(min=1, max=100, help="Jobs run at the same time by this process.")
    ] = 4,
    queue: Annotated[
        list[str] | None,
        typer.Option("--queue", "-q", help="Take jobs from this queue only (repeatable)."),
    ] = None,
    burst: Annotated[
        bool, typer.Option(help="Run the jobs that are ready, then exit (for cron and CI).")
    ] = False,
    shutdown_timeout: Annotated[
        float | None,
        typer.Option(help="Seconds to let running jobs finish on SIGTERM (default: no limit)."),
    ] = None,
) -> None:
    """Migrate the database (starting the embedded one if none is configured) and run jobs.

    SIGINT/SIGTERM: take no new job, finish the running ones, exit; a second signal exits at
    once. Any number of workers may run side by side: each job runs in one of them.
    """
    from app.worker.runner import run_worker_until_signalled

    settings = get_settings()
    configure_logging_from(settings)
    try:
        url = _prepare_database()
        ok = asyncio.run(
            run_worker_until_signalled(
                url,
                concurrency=concurrency,
                queues=queue,
                burst=burst,
                shutdown_timeout=shutdown_timeout,
            )
        )
    finally:
        stop_embedded()
    if not ok:
        raise typer.Exit(code=1)


if __name__ == "__main__":  # pragma: no cover
    app(prog_name="tanso")


@claims_app.command("verify")
def claims_verify(
    claim: Annotated[
        Path, typer.Argument(help="The published claim: GET /v1/public/claims/{code}, saved.")
    ],
    keys: Annotated[
        Path, typer.Option(help="The signing keys: GET /v1/public/keys, saved (or one key).")
    ],
) -> None:
    """Verify a published claim offline with only the public key; exit 1 if it fails."""
    from app.offsets.verify_claim import parse_keys, verify_published_claim

    try:
        published = json.loads(claim.read_text(encoding="utf-8"))
        key_map = parse_keys(keys.read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        typer.echo(f"cannot read the inputs: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    result = verify_published_claim(published, key_map)
    for name, passed, detail in result.checks:
        typer.echo(f"{'ok  ' if passed else 'FAIL'} {name}: {detail}")
    typer.echo(f"claim {result.code}: {'VALID' if result.ok else 'NOT VALID'}")
    if not result.ok:
        raise typer.Exit(code=1)


@auction_app.command("verify")
def auction_verify(
    document: Annotated[
        Path, typer.Argument(help="The audit document: GET /v1/auctions/{id}/audit, saved.")
    ],
) -> None:
    """Recompute a settled auction offline from its audit document: the revealed reserve,
    seed and bids open their commitments and the clearing gives the published allocations
    and figures; exit 1 if not."""
    from app.auction.audit import AuditFormatError, checks

    try:
        results = checks(json.loads(document.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:  # AuditFormatError and JSON errors are ValueErrors
        reason = exc if isinstance(exc, AuditFormatError | OSError) else f"invalid JSON: {exc}"
        typer.echo(f"cannot read the audit document: {reason}", err=True)
        raise typer.Exit(code=2) from exc
    for check in results:
        typer.echo(f"{'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
    ok = all(c.ok for c in results)
    typer.echo(f"auction audit: {'VERIFIED' if ok else 'NOT VERIFIED'}")
    if not ok:
        raise typer.Exit(code=1)
