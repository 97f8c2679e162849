// candleflow live dashboard: history from /v1/history, live candles from /v1/stream (server-sent
// events), the pipeline panel from /v1/pipeline. No build step: plain JavaScript and the
// lightweight-charts standalone bundle (window.LightweightCharts).
"use strict";

const HISTORY_LIMIT = 500;
const KEEP_ROWS = 2000; // rows kept in memory while a page stays open
const PIPELINE_EVERY_MS = 3000;

const BBANDS = ["bbands_upper_20_2", "bbands_middle_20_2", "bbands_lower_20_2"];
const RSI = "rsi_14";
const MACD = ["macd_12_26_9", "macd_signal_12_26_9", "macd_hist_12_26_9"];

const $ = (id) => document.getElementById(id);

// What the page shows, also read by the browser test.
const state = {
  markets: [],
  timeframes: [],
  market: null, // {exchange, symbol, timeframe}
  stream: { state: "connecting", detail: "" },
  historyLoaded: false,
  rows: new Map(), // start_ms -> Features row (candle + indicators), final or provisional
  pipeline: null,
};

let chart = null;
let series = null;
let source = null; // the EventSource of the current market

// -- chart -------------------------------------------------------------------------------

function createCharts() {
  const { createChart, CandlestickSeries, HistogramSeries, LineSeries, LineStyle } = LightweightCharts;
  chart = createChart($("chart"), {
    autoSize: true,
    layout: { background: { color: "#0f1419" }, textColor: "#c7ccd1", panes: { separatorColor: "#2a323c" } },
    grid: { vertLines: { color: "#1c232b" }, horzLines: { color: "#1c232b" } },
    timeScale: { timeVisible: true, secondsVisible: false, borderColor: "#2a323c" },
    rightPriceScale: { borderColor: "#2a323c" },
  });
  const line = (color, pane, extra = {}) => chart.addSeries(LineSeries,
    { color, lineWidth: 1, priceLineVisible: false, lastValueVisible: false, ...extra }, pane);

  series = {
    candles: chart.addSeries(CandlestickSeries, {
      upColor: "#26a69a", downColor: "#ef5350", wickUpColor: "#26a69a", wickDownColor: "#ef5350", borderVisible: false,
    }, 0),
    // Volume on its own scale at the bottom of the price pane.
    volume: chart.addSeries(HistogramSeries, { priceScaleId: "volume", priceFormat: { type: "volume" },
                                               lastValueVisible: false, priceLineVisible: false }, 0),
    bbUpper: line("#5c7cfa", 0),
    bbMiddle: line("#868e96", 0, { lineStyle: LineStyle.Dashed }),
    bbLower: line("#5c7cfa", 0),
    rsi: line("#cc5de8", 1, { lastValueVisible: true }),
    macd: line("#339af0", 2, { lastValueVisible: true }),
    signal: line("#fd7e14", 2),
    hist: chart.addSeries(HistogramSeries, { priceLineVisible: false, lastValueVisible: false }, 2),
  };
  series.volume.priceScale().applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
  series.candles.priceScale().applyOptions({ scaleMargins: { top: 0.05, bottom: 0.25 } });
  for (const level of [70, 30]) {
    series.rsi.createPriceLine({ price: level, color: "#495057", lineStyle: LineStyle.Dotted, axisLabelVisible: false });
  }
  // Relative heights, kept when the window resizes: price 60 %, RSI 18 %, MACD 22 %.
  const [pricePane, rsiPane, macdPane] = chart.panes();
  pricePane.setStretchFactor(0.6);
  rsiPane.setStretchFactor(0.18);
  macdPane.setStretchFactor(0.22);
}

const seconds = (ms) => Math.floor(ms / 1000);

// One data point per series for a row; a null indicator (warm-up) is a gap in its line.
function points(row) {
  const time = seconds(row.start_ms);
  const value = (name) => (row[name] === null || row[name] === undefined ? { time } : { time, value: row[name] });
  const up = row.close >= row.open;
  const hist = value(MACD[2]);
  if (hist.value !== undefined) hist.color = hist.value >= 0 ? "rgba(38,166,154,0.6)" : "rgba(239,83,80,0.6)";
  return {
    candles: { time, open: row.open, high: row.high, low: row.low, close: row.close },
    volume: { time, value: row.volume, color: up ? "rgba(38,166,154,0.35)" : "rgba(239,83,80,0.35)" },
    bbUpper: value(BBANDS[0]),
    bbMiddle: value(BBANDS[1]),
    bbLower: value(BBANDS[2]),
    rsi: value(RSI),
    macd: value(MACD[0]),
    signal: value(MACD[1]),
    hist,
  };
}

function sortedRows() {
  return [...state.rows.values()].sort((a, b) => a.start_ms - b.start_ms);
}

function redraw() {
  const rows = sortedRows();
  const data = rows.map(points);
  for (const name of Object.keys(series)) series[name].setData(data.map((p) => p[name]));
  if (rows.length) setPrecision(rows[rows.length - 1].close);
  showLegend(rows[rows.length - 1]);
}

// Keeps the row, and draws it: in place when it is the newest candle, else by redrawing.
function applyRow(row) {
  const known = state.rows.get(row.start_ms);
  if (known && !known.provisional && row.provisional) return; // a late preview never replaces a closed candle
  const newest = Math.max(-Infinity, ...state.rows.keys());
  state.rows.set(row.start_ms, row);
  trimRows();
  if (!state.historyLoaded || !chart) return;
  if (row.start_ms >= newest) {
    const p = points(row);
    for (const name of Object.keys(series)) series[name].update(p[name]);
    showLegend(row);
  } else {
    redraw();
  }
}

function trimRows() {
  if (state.rows.size <= KEEP_ROWS) return;
  const starts = [...state.rows.keys()].sort((a, b) => a - b);
  for (const start of starts.slice(0, starts.length - KEEP_ROWS)) state.rows.delete(start);
}

function setPrecision(price) {
  const precision = price >= 1000 ? 2 : price >= 1 ? 4 : 8;
  series.candles.applyOptions({ priceFormat: { type: "price", precision, minMove: 10 ** -precision } });
}

function showLegend(row) {
  if (!row) {
    $("legend").textContent = "";
    return;
  }
  const f = (v, digits = 2) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
  const when = new Date(row.start_ms).toISOString().replace("T", " ").slice(0, 16);
  $("legend").innerHTML =
    `${when} UTC${row.provisional ? " (open)" : ""} · O <b>${f(row.open)}</b> H <b>${f(row.high)}</b> ` +
    `L <b>${f(row.low)}</b> C <b>${f(row.close)}</b> V <b>${f(row.volume, 4)}</b> · ` +
    `RSI <b>${f(row[RSI])}</b> · MACD <b>${f(row[MACD[0]], 4)}</b> / <b>${f(row[MACD[1]], 4)}</b>`;
}

// -- data --------------------------------------------------------------------------------

const pathSymbol = (symbol) => symbol.replace("/", "-");
const marketPath = (m) => `${m.exchange}/${pathSymbol(m.symbol)}?timeframe=${m.timeframe}`;

async function loadHistory() {
  const market = state.market;
  const response = await fetch(`/v1/history/${marketPath(market)}&limit=${HISTORY_LIMIT}`);
  if (market !== state.market) return; // another market was chosen meanwhile
  if (response.status === 404) {
    notice(`No candles yet for ${market.exchange}:${market.symbol} at ${market.timeframe}; ` +
           "new ones appear here as they close.");
  } else if (!response.ok) {
    notice(`Could not load the history: ${response.status} ${await response.text()}`);
  } else {
    notice(null);
    // History rows are closed candles; live rows already received for the same start are the same
    // candle, newer ones stay.
    for (const row of (await response.json()).rows) {
      const known = state.rows.get(row.start_ms);
      if (!known || known.provisional) state.rows.set(row.start_ms, row);
    }
  }
  state.historyLoaded = true;
  if (chart) redraw();
}

function openStream() {
  if (source) source.close();
  source = new EventSource(`/v1/stream/${marketPath(state.market)}`);
  source.addEventListener("status", (event) => {
    const previous = state.stream.state;
    showStream(JSON.parse(event.data));
    // Back from an outage (or just connected): closed candles may have been missed.
    if (state.stream.state === "live" && previous !== "live" && state.historyLoaded) loadHistory();
  });
  source.addEventListener("candle", (event) => applyRow(JSON.parse(event.data)));
  source.addEventListener("partial", (event) => applyRow(JSON.parse(event.data)));
  source.addEventListener("resync", () => loadHistory());
  source.onerror = () => showStream({ state: "disconnected", detail: "the server is unreachable; reconnecting" });
}

function showStream(status) {
  state.stream = status;
  const badge = $("stream");
  badge.dataset.state = status.state;
  badge.textContent = status.state === "live" ? "live" : `live stream ${status.state}`;
  badge.title = status.detail || "";
}

const LIBRARY_MISSING = "The chart library (lightweight-charts) is not installed: run `npm ci` (or `make install`) " +
  "in the candleflow repository, then reload this page.";

// The message above the chart; the missing library stays mentioned whatever else is said.
function notice(text) {
  const lines = [chart ? null : LIBRARY_MISSING, text].filter(Boolean);
  $("notice").hidden = lines.length === 0;
  $("notice").textContent = lines.join(" ");
}

function selectMarket(market) {
  state.market = market;
  state.rows = new Map();
  state.historyLoaded = false;
  if (chart) redraw();
  const query = new URLSearchParams({ exchange: market.exchange, symbol: pathSymbol(market.symbol),
                                      timeframe: market.timeframe });
  history.replaceState(null, "", `?${query}`);
  fillSelectors();
  openStream();
  loadHistory();
}

// -- selectors ---------------------------------------------------------------------------

function options(select, values, selected, label = (v) => v) {
  select.replaceChildren(...values.map((v) => new Option(label(v), v, false, v === selected)));
}

function fillSelectors() {
  const m = state.market;
  const exchanges = [...new Set([m.exchange, ...state.markets.map((x) => x.exchange)])];
  const symbols = [...new Set([m.symbol, ...state.markets.filter((x) => x.exchange === m.exchange).map((x) => x.symbol)])];
  const withData = state.markets.find((x) => x.exchange === m.exchange && x.symbol === m.symbol)?.timeframes || [];
  options($("exchange"), exchanges, m.exchange);
  options($("symbol"), symbols, m.symbol);
  options($("timeframe"), state.timeframes, m.timeframe, (tf) => (withData.includes(tf) ? tf : `${tf} (no data)`));
}

function onSelectorChange() {
  const exchange = $("exchange").value;
  let symbol = $("symbol").value;
  if (exchange !== state.market.exchange) {
    symbol = state.markets.find((x) => x.exchange === exchange)?.symbol || symbol;
  }
  selectMarket({ exchange, symbol, timeframe: $("timeframe").value });
}

// The market in the address (?exchange=kraken&symbol=BTC-USD&timeframe=1m), else the first with data.
function initialMarket() {
  const query = new URLSearchParams(location.search);
  const first = state.markets.find((m) => m.timeframes.length) || state.markets[0];
  const timeframe = query.get("timeframe") || first?.timeframes[0] || state.timeframes[0];
  if (query.get("exchange") && query.get("symbol")) {
    return { exchange: query.get("exchange"), symbol: query.get("symbol").toUpperCase().replace("-", "/"), timeframe };
  }
  return first ? { exchange: first.exchange, symbol: first.symbol, timeframe } : null;
}

// -- pipeline panel ----------------------------------------------------------------------

const rate = (v) => (v === null || v === undefined ? "–" : v < 10 ? v.toFixed(1) : Math.round(v).toLocaleString());
const count = (v) => (v === null || v === undefined ? "–" : v.toLocaleString());
const age = (s) => (s === null || s === undefined ? "–" : s < 90 ? `${Math.round(s)} s` : s < 5400 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`);

async function refreshPipeline() {
  try {
    const response = await fetch("/v1/pipeline");
    state.pipeline = await response.json();
    showPipeline(state.pipeline);
  } catch (error) {
    $("kafka").textContent = `The server is unreachable (${error.message}).`;
  }
}

function showPipeline(p) {
  if (!p.kafka.reachable) {
    $("kafka").textContent = p.kafka.error;
    $("services").replaceChildren();
    $("last-candle").textContent = "";
    $("dead-letters").textContent = "";
    return;
  }
  const missing = p.missing_topics.length ? ` · missing topics: ${p.missing_topics.join(", ")}` : "";
  $("kafka").textContent = `Kafka ${p.kafka.bootstrap}${missing}`;
  $("services").replaceChildren(...p.services.map((s) => {
    const tr = document.createElement("tr");
    const running = s.members === null ? "–" : s.members > 0 ? `yes (${s.members})` : "no";
    const cells = [s.name, running, rate(s.consumed_per_s), rate(s.produced_per_s), count(s.lag),
                   age(s.last_record?.age_s)];
    for (const text of cells) tr.appendChild(Object.assign(document.createElement("td"), { textContent: text }));
    if (s.members === 0) tr.children[1].className = "down";
    if (s.members > 0) tr.children[1].className = "up";
    return tr;
  }));
  const last = p.last_candle;
  $("last-candle").textContent = last
    ? `Last candle: ${last.exchange}:${last.symbol} ${last.timeframe}, closed ${age(last.age_s)} ago`
    : "No candle on the topics yet.";
  const dl = p.dead_letters;
  $("dead-letters").textContent = `Dead letters (${dl.topic}): ${count(dl.total)}` +
    (dl.per_s ? `, ${rate(dl.per_s)} /s` : "");
}

// -- start -------------------------------------------------------------------------------

async function start() {
  if (typeof LightweightCharts !== "undefined") createCharts();
  notice(null);
  for (const id of ["exchange", "symbol", "timeframe"]) $(id).addEventListener("change", onSelectorChange);
  refreshPipeline();
  setInterval(refreshPipeline, PIPELINE_EVERY_MS);

  const response = await fetch("/v1/markets");
  const listing = await response.json();
  state.markets = listing.markets;
  state.timeframes = listing.timeframes;
  const market = initialMarket();
  if (market) selectMarket(market);
  else notice("No market is configured or has data yet.");
}

// The browser test reads the chart's own data (not just the rows it was built from).
window.candleflow = {
  state,
  get candles() {
    return series ? series.candles.data().map(({ time, open, high, low, close }) => ({ time, open, high, low, close })) : [];
  },
  get volumes() {
    return series ? series.volume.data().map(({ time, value }) => ({ time, value })) : [];
  },
  // One of the indicator lines (bbUpper, bbMiddle, bbLower, rsi, macd, signal, hist), warm-up gaps left out.
  line(name) {
    return series ? series[name].data().filter((p) => p.value !== undefined).map(({ time, value }) => ({ time, value })) : [];
  },
  get ready() {
    return state.historyLoaded && chart !== null;
  },
};

start();
