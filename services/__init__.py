"""The loop's long-running services, one package each, every one declared on `shared.app.App`."""
