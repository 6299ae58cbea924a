"""Datasets of the benchmark: shared schema, validation, preparation and audit."""
