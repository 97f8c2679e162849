"""Hopsworks backend (optional extra ``candleflow[hopsworks]``): Features rows into feature groups.

One feature group per timeframe, ``<feature_group_prefix>_<timeframe>``
(``candleflow_features_1m``), primary key ``exchange, symbol, timeframe``,
event time ``event_time`` = the candle end. The columns are the candle values
and :func:`candleflow.core.features.feature_columns` of the timeframe, as for
the Feast views, so the two stores hold the same data.

Hopsworks decides which row is the newest per primary key from ``event_time``
in its online store; the writer still sends only the newest row per key of a
batch (:func:`candleflow.store.base.newest_per_key`) so a replay never carries
an older row past a newer one within a batch.

The mapping (:func:`feature_group_spec`, :func:`to_frame`) is unit-tested; the
writer itself has not been exercised against a live Hopsworks cluster in CI.
Select it with ``store.online.type: hopsworks`` (``host``, ``project``,
``api_key``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from candleflow.config import HopsworksStoreConfig, Settings
from candleflow.store import repo
from candleflow.store.base import MarketKey, OnlineWriter, WriteStats, newest_per_key

PRIMARY_KEY = ("exchange", "symbol", "timeframe")
EVENT_TIME = "event_time"
_HOPSWORKS_TYPES = {"float64": "double", "int64": "bigint", "bool": "boolean"}


def _import_hopsworks() -> Any:
    try:
        import hopsworks
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "the Hopsworks store needs the hopsworks client: pip install 'candleflow[hopsworks]'",
            name=exc.name) from exc
    return hopsworks


@dataclass(frozen=True)
class FeatureGroupSpec:
    name: str
    version: int
    primary_key: tuple[str, ...]
    event_time: str
    columns: dict[str, str]  # column -> Hopsworks (Hive) type, in order
    description: str


def feature_group_spec(settings: Settings, timeframe: str) -> FeatureGroupSpec:
    config = settings.store.online
    prefix = config.feature_group_prefix if isinstance(config, HopsworksStoreConfig) else "candleflow_features"
    version = config.version if isinstance(config, HopsworksStoreConfig) else 1
    schema = repo.view_schemas(settings)[timeframe]
    columns = {"exchange": "string", "symbol": "string", "timeframe": "string", EVENT_TIME: "timestamp"}
    columns.update({name: _HOPSWORKS_TYPES[kind] for name, kind in schema.columns.items()})
    return FeatureGroupSpec(name=f"{prefix}_{timeframe}", version=version, primary_key=PRIMARY_KEY,
                            event_time=EVENT_TIME, columns=columns,
                            description=f"candleflow features, timeframe {timeframe} (event time = candle end)")


def to_frame(rows: Sequence[dict[str, Any]], spec: FeatureGroupSpec) -> Any:
    """A pandas DataFrame with exactly the feature group's columns, in order."""
    import pandas as pd

    data: dict[str, Any] = {}
    for name, kind in spec.columns.items():
        if name == EVENT_TIME:
            data[name] = pd.to_datetime([r["end_ms"] for r in rows], unit="ms", utc=True)
        elif kind == "double":
            data[name] = pd.array([r.get(name) for r in rows], dtype="Float64")
        elif kind == "bigint":
            data[name] = pd.array([r.get(name) for r in rows], dtype="Int64")
        elif kind == "boolean":
            data[name] = pd.array([r.get(name) for r in rows], dtype="boolean")
        else:
            data[name] = pd.array([r.get(name) for r in rows], dtype="string")
    return pd.DataFrame(data)


class HopsworksWriter(OnlineWriter):
    name = "hopsworks"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._groups: dict[str, Any] = {}
        self._specs = {tf: feature_group_spec(settings, tf) for tf in settings.candles.timeframes}
        self._store: Any = None

    def setup(self) -> None:
        hopsworks = _import_hopsworks()
        config = self.settings.store.online
        assert isinstance(config, HopsworksStoreConfig)
        project = hopsworks.login(host=config.host, project=config.project,
                                  api_key_value=config.api_key.get_secret_value() if config.api_key else None)
        self._store = project.get_feature_store()
        for tf, spec in self._specs.items():
            self._groups[tf] = self._store.get_or_create_feature_group(
                name=spec.name, version=spec.version, primary_key=list(spec.primary_key),
                event_time=spec.event_time, online_enabled=True, description=spec.description)

    def write(self, rows: Sequence[dict[str, Any]]) -> WriteStats:
        newest, superseded = newest_per_key(rows)
        stats = WriteStats(rows=len(rows), superseded=superseded)
        by_tf: dict[str, list[dict[str, Any]]] = {}
        for row in newest:
            by_tf.setdefault(row["timeframe"], []).append(row)
        for tf, group_rows in by_tf.items():
            self._groups[tf].insert(to_frame(group_rows, self._specs[tf]), write_options={"wait_for_job": False})
            stats.written += len(group_rows)
        return stats

    def read(self, keys: Sequence[MarketKey]) -> list[dict[str, Any] | None]:
        out: list[dict[str, Any] | None] = []
        for key in keys:
            group = self._groups.get(key.timeframe)
            if group is None:
                out.append(None)
                continue
            frame = group.filter((group.exchange == key.exchange) & (group.symbol == key.symbol)).read(online=True)
            out.append(None if frame.empty else frame.drop(columns=[EVENT_TIME]).iloc[0].to_dict())
        return out

    def close(self) -> None:
        self._groups.clear()
        self._store = None
