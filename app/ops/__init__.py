"""Running the service: API keys, rate limits, metrics, logs, ingest jobs and their workers, uploads, the
original files, and the state replicas share."""
