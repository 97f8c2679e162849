"""Redis online backend: Feast's Redis layout with an atomic compare-and-set on event time.

Feast's ``RedisOnlineStore`` reads the stored timestamps, compares in Python,
then writes: two writers can interleave between the read and the write. Here
each entity's write is one Lua script run by the server, which compares the
stored event time (kept as integer nanoseconds in ``_cf_ts:<view>`` next to
Feast's own ``_ts:<view>`` protobuf) with the new one and writes only if the new
one is not older. Values and keys are exactly Feast's, so ``get_online_features``
reads them unchanged. Registered in feature_store.yaml by dotted path
(``type: candleflow.store.redis.GuardedRedisOnlineStore``).

Needs the ``redis`` package (``pip install 'candleflow[redis]'``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable, Literal

try:
    import redis  # noqa: F401
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the install
    raise ModuleNotFoundError(
        "the Redis online store needs the redis client: pip install 'candleflow[redis]'", name=exc.name) from exc

from feast import utils
from feast.infra.online_stores.helpers import _mmh3, _redis_key
from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig, _versioned_fv_name
from google.protobuf.timestamp_pb2 import Timestamp

from candleflow.store.feast_online import FeastOnlineWriter

# KEYS[1]: the entity hash. ARGV[1]: our integer-ns field, ARGV[2]: new ns,
# ARGV[3..]: field/value pairs to set. Returns 1 if written, 0 if refused.
_CAS_SCRIPT = """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if held and tonumber(held) > tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], unpack(ARGV, 3))
return 1
"""


class GuardedRedisOnlineStoreConfig(RedisOnlineStoreConfig):
    type: Literal["candleflow.store.redis.GuardedRedisOnlineStore"] = (  # type: ignore[assignment]
        "candleflow.store.redis.GuardedRedisOnlineStore")


class GuardedRedisOnlineStore(RedisOnlineStore):
    """Feast's Redis online store whose writes are an atomic "not older" compare-and-set."""

    _script: Any = None

    def online_write_batch(self, config: Any, table: Any, data: list[tuple[Any, dict[str, Any], datetime, Any]],
                           progress: Callable[[int], Any] | None) -> int:
        client = self._get_client(config.online_store)
        if self._script is None:
            self._script = client.register_script(_CAS_SCRIPT)
        view = _versioned_fv_name(table, config)
        ts_key = f"_ts:{view}"
        ns_key = f"_cf_ts:{view}"
        with client.pipeline(transaction=False) as pipe:
            for entity_key, values, timestamp, _ in data:
                key = _redis_key(config.project, entity_key,
                                 entity_key_serialization_version=config.entity_key_serialization_version)
                ts = Timestamp()
                ts.FromDatetime(utils.make_tzaware(timestamp))
                args: list[Any] = [ns_key, ts.seconds * 1_000_000_000 + ts.nanos, ts_key, ts.SerializeToString()]
                for feature_name, val in values.items():
                    args += [_mmh3(f"{view}:{feature_name}"), val.SerializeToString()]
                self._script(keys=[key], args=args, client=pipe)
            results = pipe.execute()
        if progress:
            progress(len(data))
        return sum(1 for r in results if r == 0)


class RedisWriter(FeastOnlineWriter):
    name = "redis"
