"""Shared benchmark plumbing: machine description, results files, a private broker."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_1m_at_start": load,
    }


def write_results(name: str, figures: dict[str, Any], summary: str) -> Path:
    """Write bench/results/<name>.json (figures + machine) and <name>.md (one-paragraph summary)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": name, "taken_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": machine(), "figures": figures}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    m = record["machine"]
    (RESULTS / f"{name}.md").write_text(
        f"# {name}\n\n{summary}\n\nMachine: {m['cores']} cores, {m['cpu']}, {m['memory_gib']} GiB, "
        f"Python {m['python']}; 1-minute load at start {m['load_avg_1m_at_start']}. Taken {record['taken_at']}.\n"
    )
    print(summary)
    print(f"results: {path}")
    return path


@contextmanager
def private_broker(data_dir: Path, heap: str = "1g") -> Iterator[str]:
    """A LocalBroker on free ports for one benchmark; yields its bootstrap address."""
    from candleflow.broker.local import LocalBroker, free_port
    from candleflow.config import LocalBrokerConfig

    broker = LocalBroker(LocalBrokerConfig(port=free_port(), controller_port=free_port(), data_dir=data_dir, heap=heap))
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()
