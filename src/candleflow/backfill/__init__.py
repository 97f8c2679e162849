"""History for the feature store: exchange REST trade history and trade files, through the batch core.

- :mod:`candleflow.backfill.rest`: pages a venue's public trade history within
  its rate limits into an on-disk page cache with a checkpoint
  (:mod:`candleflow.backfill.cache`), so an interrupted run resumes with no
  duplicate and no hole;
- :mod:`candleflow.backfill.files`: bulk trade files (CSV, Parquet, JSON lines,
  Kraken's and Binance's downloadable layouts; a directory or glob);
- :mod:`candleflow.backfill.pipeline`: trades -> candles -> features through
  the same pure core as streaming, written to the offline dataset and the
  newest row per key online;
- :mod:`candleflow.backfill.replay`: ``--via-kafka``, the same trades through the
  streaming services on the run's own topics instead;
- :mod:`candleflow.backfill.handover`: the features engine state at the end of
  a backfill, as streaming the whole history leaves it, for the live hand-over;
- ``candleflow backfill`` (``cli/backfill_cmd.py``) ties them together.
"""
