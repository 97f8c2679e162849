#!/usr/bin/env python3
"""Container health probe: exit 0 when the service's health URL answers with 2xx.

The URL is ``$HEALTHCHECK_URL`` (serve's ``/healthz``, or a pipeline service's
Prometheus ``/metrics`` port), or the first argument. Standard library only, so
the probe costs a bare interpreter start and nothing of candleflow's imports.
"""

import os
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8000/healthz"


def main() -> int:
    url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("HEALTHCHECK_URL", DEFAULT_URL)
    try:
        with urllib.request.urlopen(url, timeout=4) as response:  # noqa: S310 - loopback URL from the image
            return 0 if 200 <= response.status < 300 else 1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
