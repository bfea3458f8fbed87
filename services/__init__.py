"""The OKR services: one package per service, each its own process and event store."""
