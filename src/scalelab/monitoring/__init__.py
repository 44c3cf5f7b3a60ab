"""Chapter 5's metrics monitoring and alerting system: a Prometheus-compatible TSDB.

The book's components and the modules that implement them:
- data collection: `scrape.py` (pull), `remote_write.py` and `line_protocol.py` (push),
  `exposition.py` (the text format parser; `openmetrics.py` for OpenMetrics);
- time-series database: `chunk.py` (Gorilla compression), `wal.py`, `head.py` (the in-memory
  head block), `block.py` (persisted blocks: `segments.py` holds their chunks, `index.py` their
  inverted index, `block_meta.py` their meta.json), `compact.py`, `downsample.py`, `tsdb.py`
  (head + blocks, retention, downsampling);
- query service: `promql/` (the PromQL evaluator over a `model.Querier`);
- alerting: `rules.py` (with `rulegroup.py`, `alert_state.py` and `template.py`) and
  `notify.py` (with `alert_intake.py`, `routing.py`, `delivery.py`, `receivers.py`);
- the API and dashboard: `api.py`, `server.py`.
"""
