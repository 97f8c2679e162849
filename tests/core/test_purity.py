"""The core (src/candleflow/core) does no I/O: checked on the syntax tree of every module.

A module of the core may import the standard library's computation modules,
numpy, polars, TA-Lib and, from candleflow, only ``config``, ``records`` and
the core itself. It may not import anything that reaches the network, files,
processes or a broker, and may not call ``open()`` or the file readers and
writers of numpy and polars. Imports inside functions count too.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import candleflow.core

CORE_DIR = Path(candleflow.core.__file__).resolve().parent

FORBIDDEN_MODULES = frozenset({
    # network, brokers, stores
    "socket", "ssl", "selectors", "select", "asyncio", "http", "urllib", "urllib3", "requests", "httpx", "aiohttp",
    "websockets", "websocket", "confluent_kafka", "kafka", "quixstreams", "sqlite3", "redis", "feast", "fastapi",
    "uvicorn", "smtplib", "ftplib",
    # files, processes, the environment
    "os", "pathlib", "io", "shutil", "tempfile", "glob", "fnmatch", "gzip", "bz2", "lzma", "zipfile", "tarfile",
    "pickle", "shelve", "dbm", "mmap", "csv", "subprocess", "multiprocessing", "signal", "sys", "importlib",
    "pyarrow", "fsspec",
    # side channels
    "logging", "structlog", "prometheus_client", "rich", "typer",
})
ALLOWED_CANDLEFLOW = ("candleflow.config", "candleflow.records", "candleflow.core")

# Not I/O and so allowed: exec/compile of generated pure code (core/features.py builds its step functions so).
FORBIDDEN_CALLS = frozenset({"open", "print", "input", "__import__", "breakpoint"})
# Attribute calls that read or write files: pl.read_csv, df.write_parquet, np.load, arr.tofile, Path.open ...
FORBIDDEN_METHOD = re.compile(
    r"^(read_\w+|scan_\w+|write_\w+|sink_\w+|load|loads?txt|save|savez\w*|savetxt|genfromtxt|fromfile|tofile|"
    r"memmap|open|read_text|read_bytes|write_text|write_bytes|unlink|mkdir)$"
)


def violations(source: str, filename: str = "<source>") -> list[str]:
    """Every I/O import or call in a module's source, as ``file:line: what``."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: inside candleflow.core
                continue
            modules = [node.module or ""]
        for module in modules:
            if module.split(".")[0] in FORBIDDEN_MODULES:
                found.append(f"{where}: imports {module}")
            elif module.split(".")[0] == "candleflow" and not any(
                    module == allowed or module.startswith(allowed + ".") for allowed in ALLOWED_CANDLEFLOW):
                found.append(f"{where}: imports {module} (only config, records and core are pure)")
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in FORBIDDEN_CALLS:
                found.append(f"{where}: calls {func.id}()")
            elif isinstance(func, ast.Attribute) and FORBIDDEN_METHOD.match(func.attr):
                found.append(f"{where}: calls .{func.attr}()")
    return found


def core_modules() -> list[Path]:
    return sorted(CORE_DIR.rglob("*.py"))


def test_the_core_has_modules_to_check() -> None:
    names = {path.name for path in core_modules()}
    assert {"__init__.py", "candles_batch.py"} <= names


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: p.name)
def test_core_module_does_no_io(path: Path) -> None:
    assert violations(path.read_text(), str(path.relative_to(CORE_DIR.parent))) == []


@pytest.mark.parametrize("source", [
    "import socket",
    "import confluent_kafka.admin as admin",
    "from quixstreams import Application",
    "import os.path",
    "from pathlib import Path",
    "def f():\n    import httpx\n    return httpx",
    "from candleflow.broker import topics",
    "from candleflow import tradefiles",
    "with open('trades.csv') as f:\n    pass",
    "import polars as pl\npl.read_csv('x.csv')",
    "frame.write_parquet('x.parquet')",
    "import numpy as np\nnp.load('x.npy')",
    "__import__('socket')",
    "print('hello')",
])
def test_the_checker_catches_io(source: str) -> None:
    assert violations(source) != []


def test_the_checker_accepts_pure_code() -> None:
    source = (
        "from __future__ import annotations\n"
        "import math\nimport numpy as np\nimport polars as pl\n"
        "from candleflow.config import timeframe_ms\nfrom candleflow.records import Candle\n"
        "from candleflow.core.candles import CandleAggregator\nfrom . import features\n"
        "def f(x):\n    return np.maximum.reduceat(x, [0]) + math.fsum(x) + pl.Series(x).sum()\n"
    )
    assert violations(source) == []
