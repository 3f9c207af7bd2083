"""Difference imaging: PSF, Alard-Lupton matching, subtraction, detection and measurement."""
