"""Regression tests for bad input to the functional `inference` cores."""
