"""The loop's long-running services, one package each, all built on `services.runner`."""
