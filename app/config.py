"""Settings: one object, read from the environment (prefix ``TANSO_``, nested with ``__``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_ADMIN_KEY = "tanso_admin_dev_only_change_me"


class DatabaseSettings(BaseModel):
    # None means: start the embedded PostgreSQL in ``data_dir``.
    url: str | None = None
    pool_size: int = Field(20, ge=1, le=200)
    max_overflow: int = Field(10, ge=0, le=200)
    echo: bool = False


class AuthSettings(BaseModel):
    admin_key: SecretStr = SecretStr(DEV_ADMIN_KEY)


class LedgerSettings(BaseModel):
    cash_asset: str = "JPY"


class ClaimsSettings(BaseModel):
    # Ed25519 private key (PEM, PKCS#8) that signs published claims. Unset in development and
    # tests: one is made on first use and kept in ``<data_dir>/claims-signing-key.pem``.
    signing_key: SecretStr | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TANSO_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    environment: Literal["development", "test", "production"] = "development"
    data_dir: Path = Path(".tanso")
    log_json: bool = False
    log_level: str = "INFO"
    # Loggers logged at DEBUG whatever ``log_level`` says, e.g. ``["app.market.group"]`` (its
    # ``market.group_placed`` lines: how long each order group awaited and held the product
    # lock; ``bench/orders --groups`` reads them). Env: TANSO_LOG_DEBUG='["app.market.group"]'.
    log_debug: list[str] = []
    public_base_url: str = "http://127.0.0.1:8000"
    # Run the job runner inside each API process (``tanso serve``); off when ``tanso worker``
    # processes run it instead.
    worker_in_process: bool = True
    # FastAPI's own OpenTelemetry traces, metrics and logs, through the global providers an
    # operator configures. Off by default: Tanso configures none, and with it on every request
    # looks the providers up (about 5% of a worker's time on the order path).
    opentelemetry: bool = False

    database: DatabaseSettings = DatabaseSettings()
    auth: AuthSettings = AuthSettings()
    ledger: LedgerSettings = LedgerSettings()
    claims: ClaimsSettings = ClaimsSettings()

    # Accept the conventional DATABASE_URL (and TANSO_ADMIN_KEY) as well as the nested names.
    database_url_alias: str | None = Field(
        None, validation_alias=AliasChoices("DATABASE_URL", "TANSO_DATABASE_URL")
    )
    admin_key_alias: SecretStr | None = Field(None, validation_alias="TANSO_ADMIN_KEY")

    @model_validator(mode="after")
    def _apply_aliases_and_guard_secrets(self) -> Settings:
        if self.database.url is None and self.database_url_alias:
            self.database.url = self.database_url_alias
        if self.admin_key_alias is not None:
            self.auth.admin_key = self.admin_key_alias
        if self.environment == "production":
            if self.auth.admin_key.get_secret_value() == DEV_ADMIN_KEY:
                raise ValueError("TANSO_ADMIN_KEY must be set outside development")
            if len(self.auth.admin_key.get_secret_value()) < 24:
                raise ValueError("TANSO_ADMIN_KEY must be at least 24 characters")
            if self.claims.signing_key is None:
                raise ValueError("TANSO_CLAIMS__SIGNING_KEY must be set outside development")
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()


async def settings_dependency() -> Settings:
    """``get_settings`` for ``Depends``: FastAPI runs a plain ``def`` dependency in its thread
    pool, a thread hop per request (about a tenth of an authenticated request's time)."""
    return get_settings()
