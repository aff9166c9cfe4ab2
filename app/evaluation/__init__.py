"""Offline evaluation of retrieval methods on the benchmark (never imports the HTTP layer)."""
