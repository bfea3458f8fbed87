"""The review service: scores, reflections and carry-over decisions at the end of a cycle."""
