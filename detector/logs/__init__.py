"""Log heads: zero-shot log classification and per-source window summaries (pure compute).

    from detector.logs.analyzer import LogAnalyzer, LogAnalyzerConfig, LogRecord, parse_log_value

Modules: templates (masking + Drain3 template mining), encoder (all-MiniLM-L6-v2, offline, cached),
classifier (zero-shot labels from label descriptions), summarizer (tumbling windows, MMR
highlights), abstractive (optional local seq2seq summaries), head (the one object both the CLI and
the Kafka pipeline drive). Label sets shipped in labels/: severity, topic.
"""
