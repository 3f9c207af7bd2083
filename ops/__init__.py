"""Operator tooling: cluster control, drills and the link simulator."""
