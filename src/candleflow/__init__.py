"""candleflow: a real-time feature pipeline for crypto markets."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("candleflow")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"
