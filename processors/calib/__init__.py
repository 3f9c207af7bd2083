"""Calibration: ISR building blocks, MEANCLIP combination and master bias, dark and flat."""
