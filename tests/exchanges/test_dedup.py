from candleflow.exchanges.dedup import TradeDedup
from candleflow.records import Trade


def trade(trade_id, symbol="BTC/USD", exchange="kraken"):
    return Trade(exchange=exchange, symbol=symbol, trade_id=str(trade_id), price=1.0, qty=1.0, side="buy",
                 ts_ms=1, recv_ms=1)


def test_repeats_are_dropped_by_exchange_symbol_and_id():
    dedup = TradeDedup(capacity=10)
    first = [trade(1), trade(2), trade(2), trade(1, symbol="ETH/USD"), trade(1, exchange="binance")]
    assert [(t.exchange, t.symbol, t.trade_id) for t in dedup.filter(first)] == [
        ("kraken", "BTC/USD", "1"), ("kraken", "BTC/USD", "2"), ("kraken", "ETH/USD", "1"), ("binance", "BTC/USD", "1")]
    assert dedup.filter([trade(2), trade(3)]) == [trade(3)]
    assert dedup.duplicates == 2


def test_memory_is_bounded_and_oldest_forgotten_first():
    dedup = TradeDedup(capacity=3)
    dedup.filter([trade(i) for i in range(10)])
    assert len(dedup) == 3
    assert dedup.seen(trade(9)) and not dedup.seen(trade(6))
