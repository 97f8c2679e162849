"""The features service: final candles in (`candles`), one Features row per candle out (`features`).

:class:`FeaturesProcessor` is what the service does with one message, around
:class:`candleflow.core.features.FeatureEngine`; the Kafka side (batches,
transactions, the state topic, rebalances) is :mod:`candleflow.services.batch_runtime`.

- one engine per message key (``exchange:symbol:timeframe``); its state (a
  position and the engine state) is kept per key, in memory and on the
  service's compacted state topic, written once per processed batch, so a
  restarted or rebalanced process continues exactly where the committed
  state stopped. With ``processing_guarantee: exactly-once`` the state, the
  output rows and the consumer offsets commit in one Kafka transaction, so a
  process killed at any instant leaves no duplicate and no gap in `features`;
- the state is stored under the indicator configuration's fingerprint: after a
  configuration change every key starts a fresh engine (recompute history with
  `candleflow compute features` when the new indicators must cover it);
- a key the service has no state for continues from the backfill's hand-over
  state when there is one (``candleflow backfill --handover-state``);
- gap-fill candles are ordinary time steps; a candle that is not newer than the
  last one of its key (a replayed duplicate), or that cannot be decoded, goes
  to the dead-letter topic with the reason;
- live view: still-open candles from `candles.partial` get provisional rows
  (``provisional: true``) on `features.partial`, computed from a copy of this
  process's engine without changing its state. Same-numbered partitions of
  both topics land on the same process, so the engine is at hand; a partial
  candle for a key this process has not seen yet is skipped (counted).

A process keeps the engines it used recently in memory and reuses one only if
its candle count and last start match the stored state, so the stored state
stays the single source of truth (after an aborted transaction the state wins).

Per candle the hot path is: decode and validate the candle, one small state
read (the position), the engine update, two state writes (plain dict entries;
the runtime encodes each touched key's state once per batch) and the Features
row, encoded by joining the encoded candle and the encoded values (see
bench/results/features_stream.md for where the time goes).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from prometheus_client import Counter

from candleflow.config import Settings, timeframe_ms
from candleflow.core.features import FeatureEngine, indicators_for
from candleflow.dlq import dead_letter, encode_dead_letter
from candleflow.log import get_logger
from candleflow.metrics import DEAD_LETTERS, serve_metrics
from candleflow.records import CANDLE_FIELDS, Candle, RecordError, decode_candle, encode, to_dict

SERVICE = "features"
FEATURES, PARTIAL, DLQ = "features", "features.partial", "dlq"

CANDLES_IN = Counter("candleflow_features_candles_total", "Final candles turned into features rows", ["timeframe"])
PARTIALS_OUT = Counter("candleflow_features_partial_total", "Provisional rows produced from still-open candles")
PARTIALS_SKIPPED = Counter("candleflow_features_partial_skipped_total",
                           "Still-open candles skipped (no engine for the key in this process yet)")
GAPS = Counter("candleflow_features_gaps_total", "Candles that do not follow their key's previous candle")

log = get_logger(__name__)


@dataclass
class _Cached:
    engine: FeatureEngine
    last_start_ms: int
    state: Any  # the state object the engine was last stored in


class FeaturesProcessor:
    """What the service does with one message; no Kafka here, so tests can drive it directly.

    `state` is anything with ``get(key, default)`` and ``set(key, value)``: the key's state
    (the runtime gives each message key of each partition a dict of its own).
    Each method returns ``[(destination, value_bytes), ...]``.

    With ``live_engines`` the engine object itself is stored under the engine key
    instead of a snapshot of its state (:meth:`FeatureEngine.raw_state`, the
    largest cost per candle after the maths); whoever writes the state out
    takes the snapshot then, once (see :func:`snapshot`). An engine is then
    reused only with the state object it is stored in, so a stored engine always
    belongs to that state alone and matches its position.
    """

    def __init__(self, settings: Settings, cache_size: int = 10_000, live_engines: bool = False) -> None:
        self.settings = settings
        self.config = settings.features
        self.live_engines = live_engines
        self._keys: dict[str, tuple[str, str]] = {}
        self._indicators: dict[str, Any] = {}
        self._fingerprints: dict[str, str] = {}
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._cache_size = cache_size
        self._row_encoders: dict[str, RowEncoder] = {}
        self._preview_engines: dict[str, FeatureEngine] = {}  # timeframe -> where provisional rows are computed
        self._candles_topic = settings.topics.candles.name
        self._partial_topic = settings.topics.candles_partial.name
        self._timeframe_ms: dict[str, int] = {}
        # Final candles per timeframe since the last sync_metrics(): a Prometheus counter
        # takes a lock per increment, a dict entry does not.
        self._candle_counts: dict[str, int] = {}

    def _engine_for(self, timeframe: str) -> FeatureEngine:
        if timeframe not in self._indicators:
            self._indicators[timeframe] = indicators_for(self.config, timeframe)
        engine = FeatureEngine(self._indicators[timeframe], self.config.candle_features)
        if timeframe not in self._fingerprints:
            self._fingerprints[timeframe] = engine.fingerprint
            self._row_encoders[timeframe] = RowEncoder(engine.columns)
        return engine

    def _state_keys(self, timeframe: str) -> tuple[str, str]:
        """(position key, engine key): the small position is read on every candle, the engine only
        when this process has no matching copy in memory."""
        keys = self._keys.get(timeframe)
        if keys is None:
            if timeframe not in self._fingerprints:
                self._engine_for(timeframe)
            fingerprint = self._fingerprints[timeframe]
            keys = self._keys[timeframe] = (f"position:{fingerprint}", f"engine:{fingerprint}")
        return keys

    def _dead(self, reason: str, raw: bytes, detail: str, key: str, source: str) -> list[tuple[str, bytes]]:
        DEAD_LETTERS.labels(SERVICE, reason).inc()
        return [(DLQ, encode_dead_letter(dead_letter(SERVICE, reason, raw, detail=detail, source=source, key=key)))]

    def _decode(self, raw: bytes, key: str, source: str) -> Any:
        try:
            candle = decode_candle(raw)
        except RecordError as exc:
            return self._dead("invalid_candle", raw, str(exc), key, source)
        if candle.timeframe not in self._timeframe_ms:
            try:
                self._timeframe_ms[candle.timeframe] = timeframe_ms(candle.timeframe)
            except ValueError as exc:
                return self._dead("invalid_timeframe", raw, str(exc), key, source)
        if key and key != candle.key:
            return self._dead("key_mismatch", raw, f"message key {key!r} but the candle is {candle.key!r}", key, source)
        return candle

    def final(self, raw: bytes, key: str, state: Any) -> list[tuple[str, bytes]]:
        """A closed candle: advance the key's engine and emit its Features row."""
        candle = self._decode(raw, key, self._candles_topic)
        if isinstance(candle, list):
            return candle
        candle_key = key or candle.key  # equal when the message has a key (checked by _decode)
        position_key, engine_key = self._state_keys(candle.timeframe)
        position = state.get(position_key, None)
        cached = self._cache.get(candle_key)
        if position is None:
            engine, last_start = self._seeded(candle)
        else:
            last_start, count = position
            if (cached is not None and cached.last_start_ms == last_start and cached.engine.count == count
                    and (cached.state is state or not self.live_engines)):
                engine = cached.engine
            else:  # first sight in this process, or the store was rolled back: the store wins
                saved = state.get(engine_key)
                if isinstance(saved, FeatureEngine):  # live_engines: this state's own engine
                    engine = saved
                else:
                    engine = self._engine_for(candle.timeframe)
                    engine.load_state(saved)
        if last_start is not None:
            if candle.start_ms <= last_start:
                return self._dead("stale_candle", raw,
                                  f"start_ms {candle.start_ms} is not after the key's last candle {last_start}",
                                  candle_key, self._candles_topic)
            if candle.start_ms != last_start + self._timeframe_ms[candle.timeframe]:
                GAPS.inc()
                log.warning("candle gap", key=candle_key, previous_start_ms=last_start, start_ms=candle.start_ms)
        values = engine.update_values(candle)
        # The engine itself (live_engines, see the class doc), or a snapshot with live references
        # that whoever stores it must encode at once.
        state.set(engine_key, engine if self.live_engines else engine.raw_state())
        state.set(position_key, [candle.start_ms, engine.count])
        if cached is not None and cached.engine is engine:
            cached.last_start_ms, cached.state = candle.start_ms, state
            self._cache.move_to_end(candle_key)
        else:
            self._remember(candle_key, _Cached(engine, candle.start_ms, state))
        counts = self._candle_counts
        counts[candle.timeframe] = counts.get(candle.timeframe, 0) + 1
        return [(FEATURES, self._row_encoders[candle.timeframe](candle, values))]

    def sync_metrics(self) -> None:
        """Move the counts kept since the last call into the Prometheus counters (once per batch)."""
        for timeframe, count in self._candle_counts.items():
            CANDLES_IN.labels(timeframe).inc(count)
        self._candle_counts.clear()

    def _seeded(self, candle: Candle) -> tuple[FeatureEngine, int | None]:
        """The engine of a key this service has no state for: a fresh one, or the one a backfill
        left for the live hand-over (``candleflow backfill --handover-state``), so the key continues
        exactly as if the service had streamed the whole history. Read once per new key."""
        from candleflow.backfill.handover import load_state

        engine = self._engine_for(candle.timeframe)
        saved = load_state(self.settings.data_dir, candle.exchange, candle.symbol, candle.timeframe)
        if saved is None:
            return engine, None
        if saved.fingerprint != engine.fingerprint:
            log.warning("hand-over state ignored: it belongs to another indicator configuration", key=candle.key)
            return engine, None
        engine.load_state(saved.engine)
        log.info("continuing from the backfill's hand-over state", key=candle.key, last_start_ms=saved.last_start_ms)
        return engine, saved.last_start_ms

    def partial(self, raw: bytes, key: str) -> list[tuple[str, bytes]]:
        """A still-open candle: a provisional row from a copy of the key's engine; nothing is stored."""
        candle = self._decode(raw, key, self._partial_topic)
        if isinstance(candle, list):
            return candle
        cached = self._cache.get(candle.key)
        if cached is None or candle.start_ms <= cached.last_start_ms:
            PARTIALS_SKIPPED.inc()
            return []
        spare = self._preview_engines.get(candle.timeframe)
        if spare is None:  # one per timeframe's layout, whatever the number of keys
            spare = self._preview_engines[candle.timeframe] = self._engine_for(candle.timeframe)
        row = to_dict(candle)
        row.update(cached.engine.preview(candle, spare))
        row["provisional"] = True
        PARTIALS_OUT.inc()
        return [(PARTIAL, encode(row))]

    def forget(self, keys: Any) -> None:
        """Drop the in-memory engines of `keys` (their partition moved to another process)."""
        for key in keys:
            self._cache.pop(key, None)

    def _remember(self, key: str, cached: _Cached) -> None:
        self._cache[key] = cached
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)


def snapshot(state: dict[str, Any]) -> dict[str, Any]:
    """A key's state as plain data, for :func:`encode_state`: live engines (see
    :class:`FeaturesProcessor`) replaced by their state."""
    return {name: value.raw_state() if isinstance(value, FeatureEngine) else value for name, value in state.items()}


class RowEncoder:
    """Encodes the Features records of one feature layout (an engine's ``columns``).

    A Features record is the candle's fields, then the feature values, as one
    JSON object: the same bytes as ``encode({**to_dict(candle), **row})``, where
    ``row`` maps the layout's columns to `values` (the list
    :meth:`FeatureEngine.update_values` returns). Rows are encoded through a
    Struct type made for the layout, so the ~50 field names are encoded once,
    here, instead of for every row.
    """

    def __init__(self, columns: Sequence[str]) -> None:
        self._columns = list(columns)
        names = list(CANDLE_FIELDS) + self._columns
        self._by_struct = len(set(names)) == len(names)
        # A column named like a candle field would overwrite it in the merged dict: that (odd)
        # layout keeps the merged dict, so the bytes stay those of the Features record.
        if self._by_struct:
            fields = [f"f{i}" for i in range(len(names))]
            self._row_type = msgspec.defstruct("FeaturesRow", fields, rename=dict(zip(fields, names)), gc=False)

    def __call__(self, candle: Candle, values: list[float | None]) -> bytes:
        if self._by_struct:
            return _row_encoder.encode(self._row_type(*_astuple(candle), *values))
        return encode({**to_dict(candle), **dict(zip(self._columns, values))})


_astuple = msgspec.structs.astuple
_row_encoder = msgspec.json.Encoder()
_key_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder()
_value_encoder = msgspec.msgpack.Encoder()
_value_decoder = msgspec.msgpack.Decoder()
# First bytes of the JSON keys, objects and arrays earlier versions stored; MessagePack text, maps
# and arrays never start with them (they are MessagePack's small positive integers).
_JSON_STARTS = frozenset(b'"{[')


def encode_state(value: Any) -> bytes:
    """The state store's dumps, for its keys and its values.

    Keys (text) are JSON, as they always were, so an existing store keeps its
    keys. Values are MessagePack: every float is its 8 bytes (exact, NaN kept),
    several times cheaper to write and read than JSON text for the ~400 numbers
    of an engine state.
    """
    if type(value) is str:
        return _key_encoder.encode(value)
    return _value_encoder.encode(value)


def decode_state(raw: bytes) -> Any:
    """The state store's loads: MessagePack, or JSON for keys and values written by earlier versions."""
    if raw[0] in _JSON_STARTS:
        return _json_decoder.decode(raw)
    return _value_decoder.decode(raw)


def run(settings: Settings) -> None:
    """Run the service until SIGINT/SIGTERM (the Kafka loop is :mod:`candleflow.services.batch_runtime`)."""
    from candleflow.services import batch_runtime

    serve_metrics(settings.features.metrics_port, settings.metrics_host)
    batch_runtime.run(settings)


# --- batch path: files in, files out --------------------------------------------

_REQUIRED = ("exchange", "symbol", "timeframe", "start_ms", "open", "high", "low", "close", "volume")


class BatchInputError(ValueError):
    """The input file cannot be used at all (unreadable, unknown extension, missing columns)."""


@dataclass
class BatchResult:
    rows: int
    keys: int
    rejected: int
    rejects_path: Any = None


def read_table(path: Any) -> Any:
    import polars as pl

    suffix = str(path).lower().rsplit(".", 1)[-1]
    try:
        if suffix == "csv":
            return pl.read_csv(path, schema_overrides={"exchange": pl.Utf8, "symbol": pl.Utf8, "timeframe": pl.Utf8})
        if suffix in ("jsonl", "ndjson"):
            return pl.read_ndjson(path)
        if suffix == "parquet":
            return pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise BatchInputError(f"cannot read {path}: {exc}") from None
    raise BatchInputError(f"{path}: unknown file type (use .csv, .jsonl or .parquet)")


def write_table(frame: Any, path: Any) -> None:
    suffix = str(path).lower().rsplit(".", 1)[-1]
    if suffix == "csv":
        frame.write_csv(path)
    elif suffix in ("jsonl", "ndjson"):
        frame.write_ndjson(path)
    elif suffix == "parquet":
        frame.write_parquet(path)
    else:
        raise BatchInputError(f"{path}: unknown file type (use .csv, .jsonl or .parquet)")


def complete_candles(frame: Any) -> tuple[Any, Any, bool]:
    """Fill the optional Candle fields and split off invalid rows.

    Missing columns are filled as follows: ``end_ms`` = start + the timeframe;
    ``quote_volume`` = vwap·volume if vwap is given, else close·volume;
    ``vwap`` = quote_volume / volume when volume > 0, else close; ``trades`` = 0;
    ``gap_fill`` = volume is 0 and open = high = low = close; ``buy_volume`` = 0
    and then ``buy_ratio`` is null (unknown). Returns (valid, rejected-with-reason,
    buy_volume_known).
    """
    import polars as pl

    missing = [c for c in _REQUIRED if c not in frame.columns]
    if missing:
        raise BatchInputError(f"missing column(s): {', '.join(missing)} (need {', '.join(_REQUIRED)})")
    frame = frame.with_row_index("_line", offset=1)
    floats = ["open", "high", "low", "close", "volume"] + [c for c in ("quote_volume", "vwap", "buy_volume")
                                                          if c in frame.columns]
    frame = frame.with_columns([pl.col(c).cast(pl.Float64, strict=False) for c in floats]
                               + [pl.col("start_ms").cast(pl.Int64, strict=False),
                                  pl.col("exchange").cast(pl.Utf8), pl.col("symbol").cast(pl.Utf8),
                                  pl.col("timeframe").cast(pl.Utf8)])
    tf_ms = {tf: _tf_or_none(tf) for tf in frame["timeframe"].drop_nulls().unique().to_list()}
    frame = frame.with_columns(pl.col("timeframe").replace_strict(tf_ms, default=None, return_dtype=pl.Int64)
                               .alias("_tf_ms"))
    if "end_ms" not in frame.columns:
        frame = frame.with_columns((pl.col("start_ms") + pl.col("_tf_ms")).alias("end_ms"))
    frame = frame.with_columns(pl.col("end_ms").cast(pl.Int64, strict=False))
    if "quote_volume" not in frame.columns:
        base = pl.col("vwap") if "vwap" in frame.columns else pl.col("close")
        frame = frame.with_columns((base * pl.col("volume")).alias("quote_volume"))
    if "vwap" not in frame.columns:
        frame = frame.with_columns(pl.when(pl.col("volume") > 0).then(pl.col("quote_volume") / pl.col("volume"))
                                   .otherwise(pl.col("close")).alias("vwap"))
    buy_known = "buy_volume" in frame.columns
    if not buy_known:
        frame = frame.with_columns(pl.lit(0.0).alias("buy_volume"))
    if "trades" not in frame.columns:
        frame = frame.with_columns(pl.lit(0, dtype=pl.Int64).alias("trades"))
    frame = frame.with_columns(pl.col("trades").cast(pl.Int64, strict=False))
    if "gap_fill" not in frame.columns:
        frame = frame.with_columns(((pl.col("volume") == 0) & (pl.col("open") == pl.col("close"))
                                    & (pl.col("high") == pl.col("close")) & (pl.col("low") == pl.col("close")))
                                   .alias("gap_fill"))
    frame = frame.with_columns(pl.col("gap_fill").cast(pl.Boolean, strict=False))

    def positive(c: str) -> Any:
        return pl.col(c).is_not_null() & pl.col(c).is_finite() & (pl.col(c) > 0)

    def non_negative(c: str) -> Any:
        return pl.col(c).is_not_null() & pl.col(c).is_finite() & (pl.col(c) >= 0)

    checks = [
        ("empty exchange, symbol or timeframe", pl.all_horizontal(
            [pl.col(c).is_not_null() & (pl.col(c).str.len_chars() > 0) for c in ("exchange", "symbol", "timeframe")])),
        ("invalid timeframe", pl.col("_tf_ms").is_not_null()),
        ("start_ms/end_ms missing or end_ms <= start_ms", pl.col("start_ms").is_not_null()
         & pl.col("end_ms").is_not_null() & (pl.col("end_ms") > pl.col("start_ms"))),
        *[(f"{c} must be a finite number > 0", positive(c)) for c in ("open", "high", "low", "close", "vwap")],
        *[(f"{c} must be a finite number >= 0", non_negative(c)) for c in ("volume", "quote_volume", "buy_volume")],
        ("trades must be an integer >= 0", pl.col("trades").is_not_null() & (pl.col("trades") >= 0)),
        ("gap_fill must be a boolean", pl.col("gap_fill").is_not_null()),
    ]
    reason = pl.lit(None, dtype=pl.Utf8)
    for message, ok in reversed(checks):
        reason = pl.when(~ok.fill_null(False)).then(pl.lit(message)).otherwise(reason)
    frame = frame.with_columns(reason.alias("_reason"))
    # A candle not newer than an earlier one of its key would be dead-lettered by the service too.
    frame = frame.with_columns(
        pl.when(pl.col("_reason").is_null() & pl.struct("exchange", "symbol", "timeframe", "start_ms").is_duplicated()
                & (pl.col("_line") != pl.col("_line").min().over(["exchange", "symbol", "timeframe", "start_ms"])))
        .then(pl.lit("duplicate candle (same key and start_ms as an earlier row)")).otherwise(pl.col("_reason"))
        .alias("_reason"))
    rejected = frame.filter(pl.col("_reason").is_not_null())
    valid = frame.filter(pl.col("_reason").is_null())
    return valid, rejected, buy_known


def _tf_or_none(timeframe: str) -> int | None:
    try:
        return timeframe_ms(timeframe)
    except (ValueError, TypeError):
        return None


def compute_features_table(frame: Any, config: Any) -> tuple[Any, Any]:
    """Features rows for every valid candle of `frame` (a polars DataFrame); returns (rows, rejected)."""
    import numpy as np
    import polars as pl

    from candleflow.core.features import all_feature_columns, compute_batch
    from candleflow.records import CANDLE_FIELDS

    valid, rejected, buy_known = complete_candles(frame)
    columns = all_feature_columns(config)
    valid = valid.sort(["_line"])
    order = valid.select("exchange", "symbol", "timeframe").unique(maintain_order=True)
    parts = []
    for exchange, symbol, timeframe in order.iter_rows():
        group = valid.filter((pl.col("exchange") == exchange) & (pl.col("symbol") == symbol)
                             & (pl.col("timeframe") == timeframe)).sort("start_ms")
        inputs = {c: group[c].cast(pl.Float64).to_numpy().astype(np.float64, copy=False)
                  for c in ("open", "high", "low", "close", "volume", "quote_volume", "vwap", "buy_volume",
                            "trades")}
        values = compute_batch(indicators_for(config, timeframe), inputs, config.candle_features)
        if not buy_known and "buy_ratio" in values:
            values["buy_ratio"] = np.full(len(group), np.nan)
        n = len(group)
        features = {name: values.get(name, np.full(n, np.nan)) for name in columns}
        out = group.select(list(CANDLE_FIELDS)).with_columns(
            [pl.Series(name, np.asarray(v, dtype=np.float64)).fill_nan(None) for name, v in features.items()])
        parts.append(out)
    if parts:
        result = pl.concat(parts, how="vertical")
    else:
        result = pl.DataFrame(schema={**{c: valid.schema.get(c, pl.Float64) for c in CANDLE_FIELDS},
                                      **{c: pl.Float64 for c in columns}})
    return result, rejected


def compute_features_file(input_path: Any, output_path: Any, config: Any) -> BatchResult:
    """`candleflow compute features`: read candles, write Features rows (and rejected rows, if any)."""
    from pathlib import Path

    import polars as pl

    frame = read_table(input_path)
    rows, rejected = compute_features_table(frame, config)
    write_table(rows, output_path)
    rejects_path = None
    if len(rejected):
        rejects_path = Path(str(output_path) + ".rejected.jsonl")
        rejected.select(pl.col("_line").alias("line"), pl.col("_reason").alias("reason"),
                        pl.exclude("_line", "_reason", "_tf_ms")).write_ndjson(rejects_path)
        DEAD_LETTERS.labels(SERVICE, "invalid_candle").inc(len(rejected))
    keys = rows.select("exchange", "symbol", "timeframe").n_unique() if len(rows) else 0
    return BatchResult(rows=len(rows), keys=keys, rejected=len(rejected), rejects_path=rejects_path)
