"""The common machinery of the OKR services: settings, event store, relay, HTTP conventions."""
