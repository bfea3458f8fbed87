"""The projections service: every service's events as views — the OKR tree now and at any past
moment, the audit trail, check-in histories, meetings, reviews."""
