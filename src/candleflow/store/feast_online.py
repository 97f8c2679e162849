"""The online writer shared by the Feast-backed backends (SQLite, Redis).

Rows go straight to the Feast online store of the configured backend as
protobuf values, one batch per feature view, after keeping only the newest
row per key of the batch (:func:`candleflow.store.base.newest_per_key`).
Going through the online store object rather than ``FeatureStore.push``
skips a pandas round trip per batch; the stored layout is exactly Feast's,
so ``FeatureStore.get_online_features`` reads what the sink wrote.

The event-time guard lives in the backend's Feast store subclass
(:class:`candleflow.store.sqlite.GuardedSqliteOnlineStore`,
:class:`candleflow.store.redis.GuardedRedisOnlineStore`), so it holds for every
writer that goes through this repository, Feast's own push included.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from candleflow.config import Settings
from candleflow.store import repo
from candleflow.store.base import MarketKey, OnlineWriter, WriteStats, newest_per_key


class FeastOnlineWriter(OnlineWriter):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.store: Any = None
        self._schemas = repo.view_schemas(settings)
        self._views: dict[str, Any] = {}

    # -- lifecycle ---------------------------------------------------------------

    def setup(self) -> None:
        self.store = repo.ensure_applied(self.settings)
        for tf in self._schemas:
            self._views[tf] = self.store.get_feature_view(repo.view_name(tf))

    def close(self) -> None:
        online = self.online_store if self.store is not None else None
        # Feast's close() is async; the sync connections are these attributes.
        for attr in ("_conn", "_client"):
            conn = getattr(online, attr, None)
            if conn is not None:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass
                setattr(online, attr, None)
        self.store = None

    @property
    def provider(self) -> Any:
        return self.store._get_provider()

    @property
    def online_store(self) -> Any:
        return self.provider.online_store

    # -- writes ------------------------------------------------------------------

    def write(self, rows: Sequence[dict[str, Any]]) -> WriteStats:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
        from feast.protos.feast.types.Value_pb2 import Value as ValueProto

        newest, superseded = newest_per_key(rows)
        stats = WriteStats(rows=len(rows), superseded=superseded)
        created = datetime.now(timezone.utc)
        by_view: dict[str, list[tuple[Any, dict[str, Any], datetime, datetime]]] = {}
        for row in newest:
            tf = row["timeframe"]
            schema = self._schemas.get(tf)
            if schema is None:
                raise ValueError(f"timeframe {tf!r} has no feature view; configured: {', '.join(self._schemas)}")
            key = EntityKeyProto(join_keys=[repo.JOIN_KEY],
                                 entity_values=[ValueProto(string_val=repo.market_key(row["exchange"], row["symbol"]))])
            values: dict[str, Any] = {}
            for name, kind in schema.columns.items():
                value = row.get(name)
                if value is None:
                    values[name] = ValueProto()
                elif kind == "float64":
                    values[name] = ValueProto(double_val=float(value))
                elif kind == "int64":
                    values[name] = ValueProto(int64_val=int(value))
                else:
                    values[name] = ValueProto(bool_val=bool(value))
            event_ts = datetime.fromtimestamp(row["end_ms"] / 1000, tz=timezone.utc)
            by_view.setdefault(tf, []).append((key, values, event_ts, created))
        config = self.store.config
        for tf, data in by_view.items():
            refused = self.online_store.online_write_batch(config, self._views[tf], data, None)
            stats.written += len(data) - (refused or 0)
            stats.stale += refused or 0
        return stats

    # -- reads -------------------------------------------------------------------

    def read(self, keys: Sequence[MarketKey]) -> list[dict[str, Any] | None]:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
        from feast.protos.feast.types.Value_pb2 import Value as ValueProto
        out: list[dict[str, Any] | None] = [None] * len(keys)
        by_tf: dict[str, list[int]] = {}
        for index, key in enumerate(keys):
            by_tf.setdefault(key.timeframe, []).append(index)
        config = self.store.config
        for tf, indexes in by_tf.items():
            if tf not in self._views:
                continue
            protos = [EntityKeyProto(join_keys=[repo.JOIN_KEY],
                                     entity_values=[ValueProto(string_val=repo.market_key(keys[i].exchange, keys[i].symbol))])
                      for i in indexes]
            results = self.online_store.online_read(config, self._views[tf], protos, None)
            columns = self._schemas[tf].columns
            for index, (event_ts, values) in zip(indexes, results):
                if event_ts is None or values is None:
                    continue
                key = keys[index]
                row: dict[str, Any] = {"exchange": key.exchange, "symbol": key.symbol, "timeframe": tf}
                for name in columns:
                    proto = values.get(name)
                    # Only scalar kinds are stored (double, int64, bool): read the set field directly.
                    kind = proto.WhichOneof("val") if proto is not None else None
                    row[name] = getattr(proto, kind) if kind is not None and kind != "null_val" else None
                # Redis answers a missing key with empty values rather than None.
                if row["end_ms"] is not None:
                    out[index] = row
        return out
