"""Configuration: one YAML file plus ``CANDLEFLOW_*`` environment variables.

Sources, strongest first: explicit overrides (CLI flags) > environment
(``CANDLEFLOW_KAFKA__BOOTSTRAP_SERVERS``, ``__`` nests) > the YAML file
(``--config``, else ``CANDLEFLOW_CONFIG``, else ``./candleflow.yaml`` if it
exists) > the defaults below.

Every model forbids unknown keys, so a typo is an error that names the key,
not a silently ignored setting. :func:`load_config` turns any validation error
into :class:`ConfigError`, whose lines read ``key.path: problem``; the CLI
prints it and exits with status 2 before anything starts.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

ENV_PREFIX = "CANDLEFLOW_"
# Variables read by the test suite and benchmarks, not settings (e.g. CANDLEFLOW_TEST_BOOTSTRAP).
TEST_ENV_PREFIX = "CANDLEFLOW_TEST_"
CONFIG_ENV = "CANDLEFLOW_CONFIG"
DEFAULT_CONFIG_FILE = "candleflow.yaml"

_TIMEFRAME_RE = re.compile(r"^([1-9][0-9]*)([smhd])$")
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_SYMBOL_RE = re.compile(r"^[A-Z0-9]+/[A-Z0-9]+$")


class ConfigError(Exception):
    """Invalid configuration; ``str()`` is one ``key.path: problem`` per line."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def timeframe_ms(timeframe: str) -> int:
    """Length of a timeframe such as ``1m``, ``4h`` or ``30s`` in milliseconds."""
    match = _TIMEFRAME_RE.match(timeframe)
    if not match:
        raise ValueError(f"invalid timeframe {timeframe!r}: expected <N><s|m|h|d>, e.g. 1m, 15m, 4h, 1d")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def _split_list(value: Any) -> Any:
    """Accept ``"a,b"`` as well as ``[a, b]`` (handy in environment variables)."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


# --- Kafka -------------------------------------------------------------------


class LocalBrokerConfig(Section):
    """The single-node KRaft broker candleflow starts when no cluster is given."""

    host: str = "127.0.0.1"
    port: int = Field(9092, ge=1, le=65535)
    controller_port: int = Field(9093, ge=1, le=65535)
    data_dir: Path = Path(".candleflow/kafka")
    cache_dir: Path | None = None  # jars; default ~/.cache/candleflow/kafka-<version>
    version: str = "4.1.1"
    heap: str = "512m"
    start_timeout_s: float = Field(90.0, gt=0)

    @model_validator(mode="after")
    def _ports_differ(self) -> LocalBrokerConfig:
        if self.port == self.controller_port:
            raise ValueError("port and controller_port must differ")
        return self


class KafkaConfig(Section):
    # None: start (or reuse) the local broker. Otherwise a real cluster's
    # bootstrap servers, e.g. "broker1:9092,broker2:9092"; nothing starts locally.
    bootstrap_servers: str | None = None
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    replication_factor: int = Field(1, ge=1)
    local: LocalBrokerConfig = LocalBrokerConfig()

    @property
    def uses_local_broker(self) -> bool:
        return not self.bootstrap_servers

    def bootstrap(self) -> str:
        return self.bootstrap_servers or f"{self.local.host}:{self.local.port}"

    def client_config(self) -> dict[str, str]:
        """librdkafka settings shared by every producer, consumer and admin."""
        conf = {"bootstrap.servers": self.bootstrap(), "security.protocol": self.security_protocol}
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        return conf


class TopicConfig(Section):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    partitions: int = Field(6, ge=1)
    retention_ms: int | None = Field(None, ge=-1)


class TopicsConfig(Section):
    trades: TopicConfig = TopicConfig(name="trades", partitions=6)
    candles: TopicConfig = TopicConfig(name="candles", partitions=6)
    candles_partial: TopicConfig = TopicConfig(name="candles.partial", partitions=6, retention_ms=3_600_000)
    features: TopicConfig = TopicConfig(name="features", partitions=6)
    # Provisional features of still-open candles (from candles.partial); created by the
    # features service when live rows are on (features.partial_updates), so not in all().
    features_partial: TopicConfig = TopicConfig(name="features.partial", partitions=6, retention_ms=3_600_000)
    dlq: TopicConfig = TopicConfig(name="dlq", partitions=1)

    def all(self) -> list[TopicConfig]:
        return [self.trades, self.candles, self.candles_partial, self.features, self.dlq]


# --- Services ----------------------------------------------------------------


class ExchangeConfig(Section):
    name: Literal["kraken", "binance", "coinbase", "bybit", "okx"]
    symbols: list[str] = Field(min_length=1)
    ws_url: str | None = None  # override the exchange's documented endpoint
    rest_url: str | None = None

    _split = field_validator("symbols", mode="before")(_split_list)

    @field_validator("symbols")
    @classmethod
    def _canonical(cls, symbols: list[str]) -> list[str]:
        for symbol in symbols:
            if not _SYMBOL_RE.match(symbol):
                raise ValueError(f"symbol {symbol!r} is not canonical BASE/QUOTE in upper case, e.g. BTC/USD")
        return symbols


class IngestConfig(Section):
    exchanges: list[ExchangeConfig] = [
        ExchangeConfig(name="kraken", symbols=["BTC/USD", "ETH/USD", "SOL/USD"]),
    ]
    silence_timeout_s: float = Field(30.0, gt=0)  # a feed silent this long is dead
    backoff_initial_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(30.0, gt=0)
    dedup_capacity: int = Field(200_000, ge=1_000)  # trade ids remembered per process
    gap_fill: bool = True  # fetch missed trades over REST after a reconnect
    max_frame_bytes: int = Field(1_048_576, ge=1024)
    metrics_port: int | None = Field(None, ge=0, le=65535)


class CandlesConfig(Section):
    timeframes: list[str] = ["1m", "5m", "15m", "1h"]
    grace_ms: int = Field(2_000, ge=0)
    tick_interval_ms: int = Field(200, ge=10)  # wall-clock check for idle windows
    # Append wall-clock ticks to `trades` (closes idle windows). Turn off to replay
    # history, where wall-clock time would make every old trade late.
    ticks: bool = True
    # Exactly-once: candles become visible to read_committed readers at each commit.
    commit_interval_ms: int = Field(250, ge=10)
    partial_updates: bool = False  # throttled still-open candles on candles.partial
    partial_interval_ms: int = Field(1_000, ge=50)
    consumer_group: str = "candleflow-candles"
    processing_guarantee: Literal["exactly-once", "at-least-once"] = "exactly-once"
    # How soon the group notices a crashed replica and hands its partitions on.
    session_timeout_ms: int = Field(10_000, ge=1_000)
    # Static group membership: a restarted replica with the same id takes its
    # partitions back at once instead of waiting for the session timeout.
    instance_id: str | None = None
    metrics_port: int | None = Field(None, ge=0, le=65535)

    _split = field_validator("timeframes", mode="before")(_split_list)

    @field_validator("timeframes")
    @classmethod
    def _valid_timeframes(cls, timeframes: list[str]) -> list[str]:
        if not timeframes:
            raise ValueError("at least one timeframe is required")
        for tf in timeframes:
            timeframe_ms(tf)
        if len(set(timeframes)) != len(timeframes):
            raise ValueError(f"duplicate timeframe in {timeframes}")
        return timeframes


class IndicatorSpec(Section):
    """One TA-Lib function, e.g. ``{function: RSI, params: {timeperiod: 14}}``.

    ``name`` overrides the output prefix (defaults to the function name in
    lower case); ``timeframes`` limits it to some timeframes (default: all).
    ``outputs`` selects and orders the outputs of a multi-output function and
    names them (``{aroonup: up, aroondown: down}``; default: all, short names
    derived from TA-Lib's). ``label`` replaces the parameter part of the output
    names (default: the values of ``params`` in TA-Lib's parameter order).
    ``inputs`` feeds other candle columns to the function's inputs, e.g.
    ``{price: volume}`` for an SMA of volume. The naming rule and its checks
    are in :mod:`candleflow.core.features`.
    """

    function: str = Field(min_length=1)
    params: dict[str, float | int | str] = {}
    name: str | None = None
    timeframes: list[str] | None = None
    outputs: dict[str, str] | None = None
    label: str | None = None
    inputs: dict[str, str | list[str]] | None = None

    _split = field_validator("timeframes", mode="before")(_split_list)


CANDLE_FEATURES = ("log_return_1", "range_pct", "body_pct", "vwap_dist", "buy_ratio")


class FeaturesConfig(Section):
    # None: the built-in default set (see candleflow.core.features).
    indicators: list[IndicatorSpec] | None = None
    indicators_file: Path | None = None  # a YAML file holding `indicators:`
    # Simple per-candle features appended after the indicator outputs.
    candle_features: list[Literal["log_return_1", "range_pct", "body_pct", "vwap_dist", "buy_ratio"]] = list(
        CANDLE_FEATURES)
    partial_updates: bool = True  # provisional rows on features.partial from candles.partial
    consumer_group: str = "candleflow-features"
    processing_guarantee: Literal["exactly-once", "at-least-once"] = "exactly-once"
    metrics_port: int | None = Field(None, ge=0, le=65535)

    _file_specs: list[IndicatorSpec] | None = PrivateAttr(None)

    _split = field_validator("candle_features", mode="before")(_split_list)

    @model_validator(mode="after")
    def _check_indicators(self) -> FeaturesConfig:
        if self.indicators is not None and self.indicators_file is not None:
            raise ValueError("set either indicators or indicators_file, not both")
        if self.indicators_file is not None:
            self._file_specs = load_indicator_file(self.indicators_file)
        specs = self.specs()
        if specs is not None:
            # Imported here: TA-Lib is only loaded when indicators are configured.
            from candleflow.core.features import check_specs

            where = "indicators" if self.indicators is not None else f"{self.indicators_file}: indicators"
            check_specs(specs, self.candle_features, where)
        return self

    def specs(self) -> list[IndicatorSpec] | None:
        """The configured indicator entries; None means the built-in default set."""
        if self.indicators is not None:
            return self.indicators
        return self._file_specs


def load_indicator_file(path: Path) -> list[IndicatorSpec]:
    """Read a YAML file holding ``indicators: [...]`` (or just the list)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"cannot read indicators file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"indicators file {path} is not valid YAML: {exc}") from None
    if isinstance(data, dict) and set(data) <= {"indicators"}:
        data = data.get("indicators")
    if not isinstance(data, list):
        raise ValueError(f"indicators file {path} must hold `indicators:` with a list of entries")
    specs = []
    for index, entry in enumerate(data):
        try:
            specs.append(IndicatorSpec.model_validate(entry))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(entry)'}: "
                f"{'unknown key' if err['type'] == 'extra_forbidden' else err['msg']}" for err in exc.errors())
            raise ValueError(f"{path}: indicators[{index}]: {problems}") from None
    return specs


class SqliteStoreConfig(Section):
    type: Literal["sqlite"] = "sqlite"
    path: Path = Path(".candleflow/online.db")


class RedisStoreConfig(Section):
    type: Literal["redis"] = "redis"
    connection_string: str = "127.0.0.1:6379"
    password: SecretStr | None = None


class HopsworksStoreConfig(Section):
    """Hopsworks feature groups instead of Feast (extra ``candleflow[hopsworks]``)."""

    type: Literal["hopsworks"] = "hopsworks"
    host: str | None = None  # None: Hopsworks' serverless app (c.app.hopsworks.ai)
    project: str | None = None
    api_key: SecretStr | None = None
    feature_group_prefix: str = Field("candleflow_features", pattern=r"^[a-z0-9_]+$")
    version: int = Field(1, ge=1)


class StoreConfig(Section):
    repo_dir: Path = Path(".candleflow/feature_repo")
    offline_dir: Path = Path(".candleflow/offline")
    project: str = Field("candleflow", pattern=r"^[A-Za-z0-9_]+$")
    online: SqliteStoreConfig | RedisStoreConfig | HopsworksStoreConfig = Field(
        SqliteStoreConfig(), discriminator="type")


class SinkConfig(Section):
    # Rows per batch at most. Batches are also cut by time and idleness (below),
    # so a large size only matters under backlog, where it means fewer, larger
    # Parquet files and more rows/s (bench/results/store_sink.md).
    batch_size: int = Field(20_000, ge=1)
    batch_interval_ms: int = Field(500, ge=10)
    # Also write a batch once no new row arrived for this long (None: only by
    # size and interval). Rows come in bursts as candles close together.
    flush_when_idle_ms: int | None = Field(50, ge=1)
    consumer_group: str = "candleflow-sink"
    # How soon the group notices a crashed sink and hands its partitions on.
    session_timeout_ms: int = Field(10_000, ge=1_000)
    # Static group membership: a restarted replica with the same id takes its
    # partitions back at once instead of waiting for a rebalance.
    instance_id: str | None = None
    metrics_port: int | None = Field(None, ge=0, le=65535)


class ServeConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)


class LogConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "console"] = "auto"  # auto: console on a TTY, else JSON


class Settings(BaseSettings):
    """The whole configuration tree (see README, "Configuration")."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
        # Lists come from the environment as "a,b" (split by the validators),
        # not as JSON; nested sections use "__".
        enable_decoding=False,
    )

    data_dir: Path = Path(".candleflow")  # local state: broker data, service state
    # Where the services' /metrics listen (their ports: <service>.metrics_port). Loopback by
    # default; 0.0.0.0 in a container so that Prometheus can scrape the pod.
    metrics_host: str = "127.0.0.1"
    kafka: KafkaConfig = KafkaConfig()
    topics: TopicsConfig = TopicsConfig()
    ingest: IngestConfig = IngestConfig()
    candles: CandlesConfig = CandlesConfig()
    features: FeaturesConfig = FeaturesConfig()
    store: StoreConfig = StoreConfig()
    sink: SinkConfig = SinkConfig()
    serve: ServeConfig = ServeConfig()
    log: LogConfig = LogConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML is passed in as init kwargs by load_config, below the
        # environment: so the order here is overrides > env > YAML.
        return (_OverrideSource(settings_cls), env_settings, init_settings)

    def redacted(self) -> dict[str, Any]:
        """The effective configuration as plain data, secrets masked."""
        return _redact(self.model_dump(mode="json"), self)


class _OverrideSource(PydanticBaseSettingsSource):
    """Explicit overrides (from CLI flags), stronger than the environment."""

    overrides: dict[str, Any] = {}

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover - unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_OverrideSource.overrides)


def _redact(data: Any, model: Any) -> Any:
    if isinstance(model, BaseModel):
        out = {}
        for key, value in data.items():
            attr = getattr(model, key, None)
            out[key] = "**********" if isinstance(attr, SecretStr) else _redact(value, attr)
        return out
    if isinstance(model, list):
        return [_redact(d, m) for d, m in zip(data, model)]
    return data


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"]) or "(root)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{loc}: {msg} (got {err['input']!r})" if err["type"] != "extra_forbidden" else f"{loc}: {msg}")
    return f"invalid configuration ({source}):\n  " + "\n  ".join(lines)


def _check_env_names(environ: Mapping[str, str]) -> None:
    """Reject CANDLEFLOW_* variables that name no setting (pydantic-settings ignores them)."""
    unknown = []
    for name in environ:
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV or name.startswith(TEST_ENV_PREFIX):
            continue
        model: Any = Settings
        for part in name[len(ENV_PREFIX):].lower().split("__"):
            fields = getattr(model, "model_fields", None)
            if fields is None:  # a leaf (or a dict/list value): deeper parts are its content
                break
            if part not in fields:
                unknown.append(name)
                break
            model = _model_of(fields[part].annotation)
    if unknown:
        raise ConfigError("invalid configuration (environment):\n  " + "\n  ".join(
            f"{name}: unknown setting (no such key)" for name in sorted(unknown)))


def _model_of(annotation: Any) -> Any:
    """The BaseModel class inside an annotation like `X | None`, else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The YAML file in use: explicit > $CANDLEFLOW_CONFIG > ./candleflow.yaml (if present)."""
    if explicit:
        return Path(explicit)
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.exists() else None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"configuration file {path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def load_config(path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Load and validate the configuration; raise :class:`ConfigError` on any problem."""
    file = config_path(path)
    data = _read_yaml(file) if file else {}
    # CANDLEFLOW_CONFIG names the file; it is not a setting.
    saved = os.environ.pop(CONFIG_ENV, None)
    _OverrideSource.overrides = overrides or {}
    source = str(file) if file else "defaults and environment"
    try:
        _check_env_names(os.environ)
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None
    except SettingsError as exc:
        raise ConfigError(f"invalid configuration ({source}): {exc}") from None
    finally:
        _OverrideSource.overrides = {}
        if saved is not None:
            os.environ[CONFIG_ENV] = saved


def dump_yaml(settings: Settings) -> str:
    return yaml.safe_dump(settings.redacted(), sort_keys=False)
