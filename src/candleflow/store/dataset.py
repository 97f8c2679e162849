"""Point-in-time training sets: Feast historical retrieval over the offline dataset.

Each entity row (a market and a timestamp) gets, per requested feature, the
value of the latest candle that had *ended* at that timestamp (event time =
candle end, ``event_timestamp <= entity timestamp``), so nothing from the
future leaks into a training row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from candleflow.config import Settings
from candleflow.store import repo

ENTITY_TIMESTAMP = "event_timestamp"


class DatasetError(ValueError):
    """Bad entities file or feature list; the message says what to fix."""


def read_table(path: Path) -> Any:
    import pandas as pd

    suffix = path.suffix.lower()
    if not path.exists():
        raise DatasetError(f"entities file {path} does not exist")
    if suffix == ".csv":
        return pd.read_csv(path)
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix in (".jsonl", ".ndjson"):
        return pd.read_json(path, lines=True)
    raise DatasetError(f"unsupported file type {suffix!r} for {path}: use .csv, .parquet or .jsonl")


def write_table(frame: Any, path: Path) -> None:
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif suffix in (".jsonl", ".ndjson"):
        frame.to_json(path, orient="records", lines=True, date_format="iso")
    else:
        raise DatasetError(f"unsupported output type {suffix!r} for {path}: use .csv, .parquet or .jsonl")


def entity_frame(frame: Any) -> Any:
    """Normalise an entities table to Feast's: ``market`` and a UTC ``event_timestamp``.

    Accepts ``exchange`` + ``symbol`` or ``market`` (``kraken:BTC/USD``), and a
    timestamp as ``event_timestamp`` (ISO text or datetime) or ``ts_ms`` (epoch ms).
    """
    import pandas as pd

    frame = frame.copy()
    if repo.JOIN_KEY not in frame.columns:
        if not {"exchange", "symbol"} <= set(frame.columns):
            raise DatasetError("entities need columns exchange and symbol (or market, e.g. kraken:BTC/USD)")
        frame[repo.JOIN_KEY] = [repo.market_key(e, s) for e, s in zip(frame["exchange"], frame["symbol"])]
    if ENTITY_TIMESTAMP in frame.columns:
        column = frame[ENTITY_TIMESTAMP]
        if pd.api.types.is_integer_dtype(column):
            frame[ENTITY_TIMESTAMP] = pd.to_datetime(column, unit="ms", utc=True)
        else:
            frame[ENTITY_TIMESTAMP] = pd.to_datetime(column, utc=True)
    elif "ts_ms" in frame.columns:
        frame[ENTITY_TIMESTAMP] = pd.to_datetime(frame["ts_ms"], unit="ms", utc=True)
    else:
        raise DatasetError("entities need a timestamp column: event_timestamp (ISO/datetime) or ts_ms (epoch ms)")
    return frame


def feature_refs(settings: Settings, items: list[str]) -> list[str]:
    """``1m:rsi_14`` or ``features_1m:rsi_14`` -> Feast references, checked against the schema."""
    schemas = repo.view_schemas(settings)
    refs = []
    for item in items:
        view, sep, name = item.partition(":")
        if not sep or not name:
            raise DatasetError(f"feature {item!r}: write <timeframe>:<column>, e.g. 1m:rsi_14")
        timeframe = view.removeprefix("features_")
        schema = schemas.get(timeframe)
        if schema is None:
            raise DatasetError(f"feature {item!r}: no timeframe {timeframe!r} (configured: {', '.join(schemas)})")
        if name not in schema.columns:
            raise DatasetError(f"feature {item!r}: {timeframe} has no column {name!r}")
        refs.append(f"{repo.view_name(timeframe)}:{name}")
    return refs


def training_set(settings: Settings, entities: Any, features: list[str], store: Any | None = None) -> Any:
    """A pandas DataFrame: the entity rows plus point-in-time correct feature values."""
    refs = feature_refs(settings, features)
    frame = entity_frame(entities)
    store = store or repo.ensure_applied(settings)
    job = store.get_historical_features(entity_df=frame, features=refs, full_feature_names=len(
        {ref.split(":")[0] for ref in refs}) > 1)
    out = job.to_df()
    return out.sort_values([repo.JOIN_KEY, ENTITY_TIMESTAMP], kind="stable").reset_index(drop=True)
