"""REST gap fill: pages from the last seen trade to the reconnect time, paced, retrying on rate limits."""

import asyncio

import httpx

from candleflow.exchanges import kraken
from candleflow.exchanges.gapfill import Pacer, fill_gap

from .fixtures import fixture


def test_pages_until_caught_up_and_waits_out_rate_limits():
    answers = [fixture("kraken", "rest_trades_rate_limited.json"), fixture("kraken", "rest_trades_page1.json"),
               fixture("kraken", "rest_trades_page2.json"), fixture("kraken", "rest_trades_empty.json")]
    seen = []

    def handler(request):
        seen.append(request.url.params.get("since"))
        return httpx.Response(200, content=answers[len(seen) - 1])

    async def run():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await fill_gap(kraken, client, "BTC/USD", since_ms=1688669597000, until_ms=1688669700000,
                                  pacer=Pacer(0.01), base_url="http://127.0.0.1:1", clock_ms=lambda: 7)

    result = asyncio.run(run())  # the rate-limited answer costs Kraken's 5 s wait once
    assert result.failure == "" and result.rate_limited == 1 and result.pages == 3
    assert [t.trade_id for t in result.trades] == ["61044952", "61044953", "61044954", "61044955"]
    assert seen == ["1688669597000000000", "1688669597000000000", "1688669599000500000", "1688669600100000000"]
