"""The naive baseline for bench/candles_stream.py: candles the way Quix Streams tutorials build them.

One ``tumbling_window(...).agg(...).final()`` per timeframe on a JSON topic,
event time from ``ts_ms``. It has none of the service's guarantees (no gap
fills, no late-trade dead letters, no closing on time, exact sums only by
luck), so it is a floor for the per-message cost, not an alternative.

Not a benchmark on its own: the leading underscore keeps ``python -m bench`` from running it.
"""

from __future__ import annotations

from typing import Any, Callable

from candleflow.config import timeframe_ms


def build_naive_app(settings: Any, on_message: Callable[[], None] | None = None) -> Any:
    from quixstreams import Application
    from quixstreams.dataframe.windows import Count, Earliest, Latest, Max, Min, Sum
    from quixstreams.kafka.configuration import ConnectionConfig

    config = settings.candles
    app = Application(
        broker_address=ConnectionConfig.from_librdkafka_dict(settings.kafka.client_config()),
        consumer_group=config.consumer_group,
        processing_guarantee=config.processing_guarantee,
        auto_offset_reset="earliest",
        state_dir=str(settings.data_dir / "state" / "naive"),
        commit_interval=config.commit_interval_ms / 1000,
        loglevel="WARNING",
    )
    trades = app.topic(settings.topics.trades.name, value_deserializer="json",
                       timestamp_extractor=lambda value, headers, ts, ts_type: value["ts_ms"])
    candles = app.topic(settings.topics.candles.name, value_serializer="json")
    sdf = app.dataframe(trades)
    if on_message is not None:
        sdf = sdf.update(lambda _value: on_message())
    sdf["quote"] = sdf["price"] * sdf["qty"]
    sdf["buy_qty"] = sdf.apply(lambda t: t["qty"] if t["side"] == "buy" else 0.0)
    for tf in config.timeframes:
        window = sdf.tumbling_window(duration_ms=timeframe_ms(tf), grace_ms=config.grace_ms).agg(
            open=Earliest("price"), high=Max("price"), low=Min("price"), close=Latest("price"),
            volume=Sum("qty"), quote_volume=Sum("quote"), buy_volume=Sum("buy_qty"), trades=Count(),
        ).final()
        window = window.apply(lambda c, tf=tf: {**c, "timeframe": tf, "vwap": c["quote_volume"] / c["volume"]})
        window.to_topic(candles)
    return app
