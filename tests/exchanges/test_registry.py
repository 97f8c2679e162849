"""Every registered adapter that exists has the module-level interface of exchanges/base.py."""

import importlib
import inspect

import pytest

from candleflow.exchanges import ADAPTERS, get_adapter

REQUIRED = ("NAME", "WS_URL", "REST_URL", "PING_INTERVAL_S", "REST_MIN_INTERVAL_S", "subscribe_frames",
            "parse_frame", "canonical_symbol", "venue_symbol", "ping_frame", "fetch_trades")


def available():
    names = []
    for name, module in ADAPTERS.items():
        try:
            importlib.import_module(module)
        except ModuleNotFoundError:
            continue
        names.append(name)
    return names


@pytest.mark.parametrize("name", available())
def test_adapter_shape(name):
    adapter = get_adapter(name)
    for attribute in REQUIRED:
        assert hasattr(adapter, attribute), f"{name} lacks {attribute}"
    assert adapter.NAME == name
    assert inspect.iscoroutinefunction(adapter.fetch_trades)
    assert adapter.parse_frame(b"not json", 0).errors


def test_template_has_the_shape_too():
    template = importlib.import_module("candleflow.exchanges._template")
    for attribute in REQUIRED:
        assert hasattr(template, attribute)
    assert template.parse_frame(b'{"type":"heartbeat"}', 0).control[0].kind == "heartbeat"


def test_unknown_name():
    with pytest.raises(ValueError):
        get_adapter("nowhere")
