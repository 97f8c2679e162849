"""The pure core: candle aggregation and indicator maths.

No I/O lives here (no Kafka, Quix, sockets, files or Feast): the streaming
services and the batch/backfill path both drive these objects, so both give
the same numbers by construction. tests/core/test_purity.py enforces it.
"""
