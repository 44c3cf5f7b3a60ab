"""Chapter 5's metrics monitoring and alerting system: a Prometheus-compatible TSDB.

The book's components and the modules that implement them:
- data collection: `scrape.py` (pull), `remote_write.py` and `line_protocol.py` (push),
  `exposition.py` (the text and OpenMetrics parser);
- time-series database: `chunk.py` (Gorilla compression), `wal.py`, `head.py` (the in-memory
  head block), `block.py` (persisted blocks with their inverted index), `tsdb.py` (head +
  blocks, retention, downsampling);
- query service: `promql/` (the PromQL evaluator over a `model.Querier`);
- alerting: `rules.py` and `notify.py`;
- the API and dashboard: `api.py`, `server.py`.
"""
