"""Regression tests for bad input to the functional `inspect` cores."""
