"""The feature store: a Feast repository managed by candleflow, online writers, the offline dataset.

- :mod:`candleflow.store.repo`: the Feast definitions (entity, one feature view
  and push source per timeframe, the offline FileSource), derived from the
  indicator configuration; ``candleflow store init|apply``.
- :mod:`candleflow.store.base`: the narrow online-writer interface and the
  backend registry; :mod:`candleflow.store.sqlite` and :mod:`candleflow.store.redis`
  are the backends, each enforcing "an older row never overwrites a newer one".
- :mod:`candleflow.store.offline`: the append-only Parquet dataset and its compaction.
"""
