"""API settings, read from environment variables (no prefix) by pydantic-settings."""

from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIB = 1024 * 1024


class ApiSettings(BaseSettings):
    """Every option the API reads; invalid values stop the process at start."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore")

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis used as Celery broker, image store and result store.",
    )
    request_timeout: float = Field(
        default=60.0,
        gt=0,
        description="Seconds POST / waits for a worker before it returns 504.",
    )
    result_ttl: int = Field(
        default=3600,
        gt=0,
        description="Seconds that task documents, results and unread image bytes live in Redis.",
    )
    max_images_per_request: int = Field(
        default=32, ge=1, description="Images accepted in one POST / body."
    )
    max_images_per_task: int = Field(
        default=256, ge=1, description="Images accepted in one POST /tasks body."
    )
    # NoDecode: pydantic-settings would otherwise parse the value as JSON first.
    webhook_allowed_hosts: Annotated[frozenset[str], NoDecode] = Field(
        default=frozenset(),
        description="Comma-separated host names or IP addresses that a task's callback_url "
        "may point to, matched exactly and case-insensitively; empty disables webhooks.",
    )
    max_image_bytes: int = Field(
        default=20 * MIB, ge=1, description="Decoded size limit of one image file, in bytes."
    )
    max_image_pixels: int = Field(
        default=64_000_000,
        ge=1,
        description="Width times height limit of one image, read from the file header.",
    )
    max_body_bytes: int = Field(
        default=128 * MIB, ge=1, description="Size limit of a request body, in bytes (413 above)."
    )
    max_queue_depth: int = Field(
        default=1000,
        ge=1,
        description="Task messages waiting in the queue beyond which new work gets 503 "
        "with Retry-After.",
    )
    # NoDecode: pydantic-settings would otherwise parse these values as JSON first.
    api_keys: Annotated[frozenset[str], NoDecode] = Field(
        default=frozenset(),
        description="Comma-separated API keys; when set, every route but /health requires "
        "one as `Authorization: Bearer <key>` or `X-API-Key`.",
    )
    cors_origins: Annotated[frozenset[str], NoDecode] = Field(
        default=frozenset(),
        description="Comma-separated origins allowed to call the API from a browser, "
        "e.g. https://app.example.com; empty sends no CORS headers.",
    )
    log_level: str = Field(default="INFO", description="Python logging level name.")
    log_format: Literal["text", "json"] = Field(
        default="text", description="`json` writes one JSON object per log line."
    )

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def parse_comma_list(cls, value: object) -> object:
        """Split a comma-separated string into a set, ignoring blanks around items."""
        if isinstance(value, str):
            return frozenset(item.strip() for item in value.split(",") if item.strip())
        return value

    @field_validator("webhook_allowed_hosts", mode="before")
    @classmethod
    def parse_host_list(cls, value: object) -> object:
        """Split `a.example, 10.0.0.5` into lower-case host names."""
        if isinstance(value, str):
            return frozenset(host.strip().lower() for host in value.split(",") if host.strip())
        return value


@lru_cache(maxsize=1)
def get_settings() -> ApiSettings:
    """Return the process-wide settings, read once from the environment."""
    return ApiSettings()
