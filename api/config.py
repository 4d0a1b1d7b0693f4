"""The service's settings: the one place configuration is read.

Every field can be set from the environment as ``MARSAD_<FIELD>`` (for example
``MARSAD_DATA_DIR=/var/lib/marsad``, ``MARSAD_API_TOKEN=...``) or passed to
:class:`Settings` directly; ``marsad serve`` passes its command-line options.

The API token is a :class:`~pydantic.SecretStr`: its ``repr`` and ``str`` hide
it, so it cannot end up in a log line by accident. When no token is configured,
``marsad serve`` keeps one in ``<data_dir>/api-token`` (created with mode 0600)
and says where it is, never what it is.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["TOKEN_FILE", "ReplayServer", "Settings"]

TOKEN_FILE = "api-token"
"""Name of the file, in the data directory, holding the generated API token."""


class ReplayServer(BaseModel):
    """A replay server (``marsad replay-server``) the service may run replay tests against.

    ``MARSAD_REPLAY_SERVERS`` holds a JSON list of them, e.g.
    ``[{"name": "lab", "host": "192.0.2.7", "port": 5201,
    "token_file": "/etc/marsad/replay-lab.token"}]``.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    """What a test request names it by."""
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(ge=1, le=65535)
    token_file: Path
    """File holding the client token the server expects (read when a test starts; never
    served nor logged)."""


class Settings(BaseSettings):
    """Configuration of ``marsad serve`` and of :func:`api.main.create_app`."""

    model_config = SettingsConfigDict(env_prefix="MARSAD_", extra="ignore")

    data_dir: Path = Path("marsad-data")
    """Directory holding the store (``marsad.db``), the ledger (``ledger.db``), uploaded
    captures (``captures/``) and the live probe's status file."""
    host: str = "127.0.0.1"
    """Address ``marsad serve`` listens on."""
    port: int = Field(default=8000, ge=0, le=65535)
    """TCP port ``marsad serve`` listens on."""
    api_token: SecretStr | None = None
    """Bearer token required by write endpoints and evidence downloads (and by reads when
    ``open_reads`` is false). None: use ``<data_dir>/api-token`` if it exists."""
    open_reads: bool = True
    """True: read endpoints need no token, so a dashboard works out of the box."""
    max_upload_bytes: int = Field(default=1 << 30, gt=0)
    """Largest capture ``POST /v1/captures`` accepts, in bytes."""
    max_decompressed_bytes: int = Field(default=16 << 30, gt=0)
    """Most bytes a gzip-compressed capture may decompress to: an upload that inflates past
    it is refused (413) as it arrives, and an analysis stops reading there."""
    analysis_workers: int = Field(default=1, ge=1, le=256)
    """Captures analysed at the same time (``marsad serve --jobs``): one on a thread of the
    service; more in as many local processes, or on the Dask cluster of ``scheduler``."""
    scheduler: str | None = None
    """A Dask scheduler (``tcp://HOST:8786`` or a scheduler file) whose workers analyse the
    uploads; they must reach the data directory's captures at the same path."""
    datasets: tuple[str, ...] = ()
    """Parquet datasets written by ``marsad analyze --out`` (paths or fsspec URLs) whose
    captures, calls and verdicts the API and dashboard show beside the uploads."""
    costly_concurrency: int = Field(default=1, ge=1, le=8)
    """Requests that re-analyse stored captures (``/v1/ledger/verify?rederive=true``,
    evidence bundles) served at the same time; more get 429."""
    retention_days: float | None = Field(default=30.0, gt=0)
    """Captures (with their flows, calls and verdicts) finished longer ago are deleted;
    None keeps them forever. The evidence ledger is never pruned."""
    retention_max_captures: int | None = Field(default=1000, gt=0)
    """At most this many captures are kept, newest first; None: no limit."""
    policy_file: Path | None = None
    """Verdict thresholds (YAML); None: the packaged policy."""
    probe_stale_s: float = Field(default=60.0, gt=0)
    """A probe status file not refreshed for this long is reported as ``stale``."""
    anonymize_key: SecretStr | None = None
    """Key passed to the evidence bundle builder to pseudonymise addresses."""
    preload: tuple[Path, ...] = ()
    """Captures analysed when the service starts (copied into the data directory)."""
    replay_servers: tuple[ReplayServer, ...] = ()
    """The replay servers ``POST /v1/tests`` may test against; there is no built-in one, so
    without any the service refuses replay tests."""
    test_resolvers: tuple[str, ...] = ()
    """DNS resolvers (IP addresses) a reachability test may name; without any a test
    uses the system's resolver only."""
    tests_max_queued: int = Field(default=8, ge=1, le=64)
    """Active tests that may wait for the one running; more get 429."""
    retention_max_tests: int | None = Field(default=1000, gt=0)
    """At most this many active tests (with their captures) are kept, newest first; tests
    older than ``retention_days`` are deleted too. Their ledger entries stay."""

    @property
    def store_path(self) -> Path:
        """The SQLite store."""
        return self.data_dir / "marsad.db"

    @property
    def ledger_path(self) -> Path:
        """The evidence ledger."""
        return self.data_dir / "ledger.db"

    @property
    def captures_dir(self) -> Path:
        """Where uploaded captures are kept while their results are."""
        return self.data_dir / "captures"

    @property
    def tests_dir(self) -> Path:
        """Where active tests write their captures and results."""
        return self.data_dir / "tests"

    @property
    def token_path(self) -> Path:
        """The generated token's file."""
        return self.data_dir / TOKEN_FILE

    def token(self) -> str | None:
        """The token in force: configured, else read from the token file, else None."""
        if self.api_token is not None:
            value = self.api_token.get_secret_value()
            return value or None
        try:
            value = self.token_path.read_text(encoding="utf-8").strip()
        except OSError:
            return None
        return value or None

    def ensure_token(self) -> Path | None:
        """Create the token file if no token is configured; return its path (None when the
        token comes from the configuration)."""
        if self.api_token is not None:
            return None
        path = self.token_path
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with open(fd, "w", encoding="utf-8") as fh:
                fh.write(secrets.token_urlsafe(32) + "\n")
        return path

