import random

import pytest

from candleflow.exchanges import fastpath
from candleflow.exchanges.dedup import TradeDedup
from candleflow.exchanges.native import NATIVE
from candleflow.records import Trade

# The window of exchanges/fastpath.py, and the native one (native/) that ingest uses when it is built.
IMPLEMENTATIONS = [fastpath.TradeDedup] + ([NATIVE.TradeDedup] if NATIVE is not None else [])


def trade(trade_id, symbol="BTC/USD", exchange="kraken"):
    return Trade(exchange=exchange, symbol=symbol, trade_id=str(trade_id), price=1.0, qty=1.0, side="buy",
                 ts_ms=1, recv_ms=1)


def test_ingest_uses_the_native_window_when_it_is_built():
    assert TradeDedup is (fastpath.TradeDedup if NATIVE is None else NATIVE.TradeDedup)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_repeats_are_dropped_by_exchange_symbol_and_id(implementation):
    dedup = implementation(capacity=10)
    first = [trade(1), trade(2), trade(2), trade(1, symbol="ETH/USD"), trade(1, exchange="binance")]
    assert [(t.exchange, t.symbol, t.trade_id) for t in dedup.filter(first)] == [
        ("kraken", "BTC/USD", "1"), ("kraken", "BTC/USD", "2"), ("kraken", "ETH/USD", "1"), ("binance", "BTC/USD", "1")]
    assert dedup.filter([trade(2), trade(3)]) == [trade(3)]
    assert dedup.duplicates == 2


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_memory_is_bounded_and_oldest_forgotten_first(implementation):
    dedup = implementation(capacity=3)
    dedup.filter([trade(i) for i in range(10)])
    assert len(dedup) == 3
    assert dedup.seen(trade(9)) and not dedup.seen(trade(6))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_ids_are_compared_as_text(implementation):
    # "7", "07" and "7.0" are different ids, whatever a venue meant by them.
    dedup = implementation(capacity=10)
    assert [dedup.add_id("okx", "BTC/USDT", i) for i in ["7", "07", "7.0", "7", "0", "00", "18446744073709551616"]] \
        == [True, True, True, False, True, True, True]
    with pytest.raises(ValueError):
        implementation(capacity=0)


@pytest.mark.skipif(NATIVE is None, reason="the native window is not built here: nothing to compare")
def test_the_native_window_answers_as_the_python_one():
    rng = random.Random(21)
    for capacity in (1, 2, 7, 50):
        python, native = fastpath.TradeDedup(capacity), NATIVE.TradeDedup(capacity)
        markets = [("kraken", "BTC/USD"), ("kraken", "ETH/USD"), ("binance", "BTC/USDT")]
        handles = {impl: [impl.ids_of(*market) for market in markets] for impl in (python, native)}
        for _ in range(5_000):
            market = rng.randrange(len(markets))
            trade_id = rng.choice([str(rng.randrange(80)), f"0{rng.randrange(9)}", f"id-{rng.randrange(20)}",
                                   str(rng.randrange(2**64 - 5, 2**64 + 5))])
            how = rng.random()
            if how < 0.6:
                answers = [impl.add_to(handles[impl][market], trade_id) for impl in (python, native)]
            elif how < 0.8:
                answers = [impl.add_id(*markets[market], trade_id) for impl in (python, native)]
            else:
                t = trade(trade_id, symbol=markets[market][1], exchange=markets[market][0])
                answers = [impl.seen(t) for impl in (python, native)]
            assert answers[0] == answers[1], (capacity, markets[market], trade_id)
            assert (len(python), python.duplicates) == (len(native), native.duplicates)
