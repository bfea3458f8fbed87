"""The goals service: cycles, objectives and key results."""
