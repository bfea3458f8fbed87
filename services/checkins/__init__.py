"""The check-in service: weekly check-ins, corrections and team check-in meetings."""
