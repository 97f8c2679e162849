"""SQLite online backend (the default): Feast's SQLite store plus an event-time guard.

Feast's ``SqliteOnlineStore`` upserts with ``ON CONFLICT DO UPDATE`` and no
event-time condition, so a replayed or late row would overwrite a newer one.
:class:`GuardedSqliteOnlineStore` keeps Feast's table layout (one row per
entity key and feature) and adds ``WHERE excluded.event_ts >= event_ts`` to the
upsert: the database itself refuses older rows, atomically, whoever writes.
It is registered in feature_store.yaml by its dotted path
(``type: candleflow.store.sqlite.GuardedSqliteOnlineStore``), which Feast
resolves to the ``...Config`` class beside it.

The database runs in WAL mode so the HTTP API reads while the sink writes, with
``synchronous=FULL``: a batch is on disk when ``write`` returns, before the
sink commits its Kafka offsets.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable, Literal

from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import extract_text_and_num
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.infra.online_stores.sqlite import SqliteOnlineStore, SqliteOnlineStoreConfig, _quote_id, _table_id
from feast.utils import to_naive_utc

from candleflow.store.feast_online import FeastOnlineWriter


class GuardedSqliteOnlineStoreConfig(SqliteOnlineStoreConfig):
    type: Literal["candleflow.store.sqlite.GuardedSqliteOnlineStore"] = (  # type: ignore[assignment]
        "candleflow.store.sqlite.GuardedSqliteOnlineStore")


class GuardedSqliteOnlineStore(SqliteOnlineStore):
    """Feast's SQLite online store whose upsert never replaces a newer event time."""

    def _get_conn(self, config: Any) -> Any:
        fresh = self._conn is None
        conn = super()._get_conn(config)
        if fresh:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=10000")
        return conn

    def online_write_batch(self, config: Any, table: Any, data: list[tuple[Any, dict[str, Any], datetime, Any]],
                           progress: Callable[[int], Any] | None) -> int:
        """Upsert; returns how many entity rows were refused as older than the stored ones."""
        conn = self._get_conn(config)
        name = _quote_id(_table_id(config.project, table, config.registry.enable_online_feature_view_versioning))
        # Feast's sqlite3 adapter stores datetimes as integer epoch seconds, so
        # the guard compares whole seconds: candle ends always are whole seconds,
        # and an equal time is the same identity (a replay), which may rewrite.
        sql = (f"INSERT INTO {name} (entity_key, feature_name, value, value_text, event_ts, created_ts) "
               f"VALUES (?, ?, ?, ?, ?, ?) "
               f"ON CONFLICT(entity_key, feature_name) DO UPDATE SET value = excluded.value, "
               f"value_text = excluded.value_text, event_ts = excluded.event_ts, created_ts = excluded.created_ts "
               f"WHERE excluded.event_ts >= {name}.event_ts")
        params = []
        for entity_key, values, timestamp, created_ts in data:
            key_bin = serialize_entity_key(entity_key,
                                           entity_key_serialization_version=config.entity_key_serialization_version)
            event_ts = to_naive_utc(timestamp)
            created = to_naive_utc(created_ts) if created_ts is not None else None
            for feature_name, val in values.items():
                params.append((key_bin, feature_name, val.SerializeToString(), extract_text_and_num(val, False)[0],
                               event_ts, created))
        with conn:
            before = conn.total_changes
            conn.executemany(sql, params)
            changed = conn.total_changes - before
        if progress:
            progress(len(data))
        per_row = len(params) // len(data) if data else 1
        return (len(params) - changed) // max(per_row, 1)


    def online_read(self, config: Any, table: Any, entity_keys: list[Any],
                    requested_features: list[str] | None = None) -> list[tuple[datetime | None, dict[str, Any] | None]]:
        """Feast's read, minus a datetime conversion per feature row.

        Feast's version lets sqlite3 convert ``event_ts`` into a datetime for every
        (entity, feature) row; all features of an entity share one event time
        (they are written together), so it is read as the stored integer epoch
        seconds and converted once per entity.
        """
        conn = self._get_conn(config)
        version = config.entity_key_serialization_version
        keys = [serialize_entity_key(k, entity_key_serialization_version=version) for k in entity_keys]
        name = _quote_id(_table_id(config.project, table, config.registry.enable_online_feature_view_versioning))
        rows = conn.execute(
            f"SELECT entity_key, feature_name, value, event_ts + 0 FROM {name} "
            f"WHERE entity_key IN ({','.join('?' * len(keys))})", keys).fetchall()
        found: dict[bytes, tuple[int, dict[str, Any]]] = {}
        for key_bin, feature_name, value, event_ts in rows:
            entry = found.get(key_bin)
            if entry is None:
                entry = found[key_bin] = (event_ts, {})
            elif event_ts > entry[0]:
                entry = found[key_bin] = (event_ts, entry[1])
            entry[1][feature_name] = ValueProto.FromString(value)
        result: list[tuple[datetime | None, dict[str, Any] | None]] = []
        for key_bin in keys:
            entry = found.get(key_bin)
            if entry is None:
                result.append((None, None))
            else:
                result.append((datetime.fromtimestamp(entry[0], tz=timezone.utc), entry[1]))
        return result


class SqliteWriter(FeastOnlineWriter):
    name = "sqlite"
