"""Common code of rlhf-loop: event contracts, topics, settings, the Kafka bus,
metrics/health endpoints and embedded runtimes. Nothing service-specific lives here."""
