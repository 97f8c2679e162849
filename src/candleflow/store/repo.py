"""The Feast feature repository that candleflow manages (``candleflow store init|apply``).

Everything here is derived from the configuration, so no schema is written twice
by hand:

- one entity, ``market``, whose single join key ``market`` is
  ``"{exchange}:{symbol}"`` (the same text as the Kafka key of a trade, e.g.
  ``kraken:BTC/USD``). Feast entities take one join key, and exchange + symbol
  is the market's identity, so they are joined into one string; the offline
  files also carry ``exchange`` and ``symbol`` as separate columns.
- one feature view per timeframe, ``features_<timeframe>`` (``features_1m``),
  whose schema is the candle columns followed by
  :func:`candleflow.core.features.feature_columns` for that timeframe. The
  timeframe is the view, so it is not part of the entity key. Event time is the
  candle end (``end_ms``).
- one push source per timeframe (``features_<timeframe>_push``), for clients
  that push rows through Feast; the candleflow sink itself writes the online
  store directly in batches (see :mod:`candleflow.store.feast_online`).
- one offline ``FileSource`` per timeframe reading candleflow's Parquet dataset
  (:mod:`candleflow.store.offline`), a glob over
  ``<offline_dir>/<exchange>/<SYMBOL-DASHED>/<timeframe>/<date>/*.parquet``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from candleflow.config import RedisStoreConfig, Settings, SqliteStoreConfig
from candleflow.records import trade_key

ENTITY_NAME = "market"
JOIN_KEY = "market"
EVENT_TIMESTAMP = "event_timestamp"  # candle end, UTC
CREATED_TIMESTAMP = "created_timestamp"  # when the sink wrote the row (newest wins among duplicates)

# Candle columns stored with every feature row, and their Feast types. The
# identity columns exchange/symbol/timeframe are the entity and the view.
CANDLE_VALUE_COLUMNS: dict[str, str] = {
    "start_ms": "int64",
    "end_ms": "int64",
    "open": "float64",
    "high": "float64",
    "low": "float64",
    "close": "float64",
    "volume": "float64",
    "quote_volume": "float64",
    "vwap": "float64",
    "trades": "int64",
    "buy_volume": "float64",
    "gap_fill": "bool",
}

STATE_FILE = "candleflow-applied.json"


def market_key(exchange: str, symbol: str) -> str:
    """The entity key of a market: ``kraken:BTC/USD``."""
    return trade_key(exchange, symbol)


def view_name(timeframe: str) -> str:
    return f"features_{timeframe}"


def push_source_name(timeframe: str) -> str:
    return f"features_{timeframe}_push"


@dataclass(frozen=True)
class ViewSchema:
    """The stored columns of one timeframe: candle values, then indicator outputs."""

    timeframe: str
    feature_columns: tuple[str, ...]

    @property
    def columns(self) -> dict[str, str]:
        """Every value column of the view with its type (``float64``/``int64``/``bool``)."""
        out = dict(CANDLE_VALUE_COLUMNS)
        out.update({name: "float64" for name in self.feature_columns})
        return out


def view_schemas(settings: Settings) -> dict[str, ViewSchema]:
    """One schema per configured candle timeframe, from the indicator configuration."""
    # Imported here: resolving the indicator configuration loads TA-Lib.
    from candleflow.core.features import feature_columns

    return {tf: ViewSchema(tf, tuple(feature_columns(settings.features, tf))) for tf in settings.candles.timeframes}


def online_store_yaml(settings: Settings) -> dict[str, Any]:
    """The ``online_store`` section of feature_store.yaml for the configured backend."""
    online = settings.store.online
    if isinstance(online, SqliteStoreConfig):
        return {"type": "candleflow.store.sqlite.GuardedSqliteOnlineStore", "path": str(Path(online.path).resolve())}
    if isinstance(online, RedisStoreConfig):
        conn = online.connection_string
        if online.password is not None:
            conn += f",password={online.password.get_secret_value()}"
        return {"type": "candleflow.store.redis.GuardedRedisOnlineStore", "connection_string": conn}
    raise ValueError(f"unknown online store type {online!r}")  # pragma: no cover - config forbids it


def offline_glob(settings: Settings, timeframe: str) -> str:
    root = Path(settings.store.offline_dir).resolve()
    return str(root / "*" / "*" / timeframe / "*" / "*.parquet")


def feature_store_yaml(settings: Settings) -> dict[str, Any]:
    repo = Path(settings.store.repo_dir).resolve()
    return {
        "project": settings.store.project,
        "provider": "local",
        "registry": {"path": str(repo / "registry.db"), "cache_ttl_seconds": 60},
        "online_store": online_store_yaml(settings),
        "offline_store": {"type": "dask"},
        "entity_key_serialization_version": 3,
    }


def write_repo(settings: Settings) -> Path:
    """Write ``feature_store.yaml`` into the repository directory (``store init``)."""
    repo = Path(settings.store.repo_dir)
    repo.mkdir(parents=True, exist_ok=True)
    Path(settings.store.offline_dir).mkdir(parents=True, exist_ok=True)
    if isinstance(settings.store.online, SqliteStoreConfig):
        Path(settings.store.online.path).parent.mkdir(parents=True, exist_ok=True)
    path = repo / "feature_store.yaml"
    text = ("# Generated by `candleflow store init` from the candleflow configuration;\n"
            "# edit candleflow.yaml instead and run `candleflow store apply`.\n"
            + yaml.safe_dump(feature_store_yaml(settings), sort_keys=False))
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def _feast_type(kind: str) -> Any:
    from feast.types import Bool, Float64, Int64

    return {"float64": Float64, "int64": Int64, "bool": Bool}[kind]


def definitions(settings: Settings) -> list[Any]:
    """The Feast objects of the repository: entity, file sources, push sources, feature views."""
    from feast import Entity, FeatureView, Field, FileSource, PushSource, ValueType
    from feast.types import String

    market = Entity(name=ENTITY_NAME, join_keys=[JOIN_KEY], value_type=ValueType.STRING,
                    description="A market: exchange:symbol, e.g. kraken:BTC/USD")
    objects: list[Any] = [market]
    for tf, schema in view_schemas(settings).items():
        source = FileSource(
            name=f"features_{tf}_offline",
            path=offline_glob(settings, tf),
            timestamp_field=EVENT_TIMESTAMP,
            created_timestamp_column=CREATED_TIMESTAMP,
            description=f"candleflow's Parquet dataset, timeframe {tf}",
        )
        push = PushSource(name=push_source_name(tf), batch_source=source)
        fields = [Field(name=JOIN_KEY, dtype=String)]
        fields += [Field(name=name, dtype=_feast_type(kind)) for name, kind in schema.columns.items()]
        view = FeatureView(
            name=view_name(tf),
            entities=[market],
            # No expiry online (the latest row stays readable); historical
            # retrieval looks back without limit for the last row <= the entity time.
            ttl=timedelta(0),
            schema=fields,
            source=push,
            online=True,
            tags={"timeframe": tf, "managed_by": "candleflow"},
        )
        objects += [source, push, view]
    return objects


def fingerprint(settings: Settings) -> str:
    data = {"yaml": feature_store_yaml(settings),
            "views": {tf: list(s.columns) for tf, s in view_schemas(settings).items()}}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def open_store(settings: Settings) -> Any:
    """A ``feast.FeatureStore`` on the repository (written first if missing)."""
    from feast import FeatureStore

    write_repo(settings)
    return FeatureStore(repo_path=str(Path(settings.store.repo_dir)))


def apply(settings: Settings, store: Any | None = None) -> Any:
    """Register the definitions with Feast (``store apply``) and create the online tables."""
    store = store or open_store(settings)
    store.apply(definitions(settings))
    (Path(settings.store.repo_dir) / STATE_FILE).write_text(json.dumps({"fingerprint": fingerprint(settings)}))
    return store


def ensure_applied(settings: Settings) -> Any:
    """The FeatureStore, applying the definitions only when the configuration changed since the last apply."""
    store = open_store(settings)
    state = Path(settings.store.repo_dir) / STATE_FILE
    try:
        applied = json.loads(state.read_text()).get("fingerprint")
    except (OSError, ValueError):
        applied = None
    if applied != fingerprint(settings):
        apply(settings, store)
    return store
