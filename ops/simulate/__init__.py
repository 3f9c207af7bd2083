"""Simulators that write what a camera writes, with known truth beside it."""
