"""Dagster layer: assets, resources, checks, IO. Thin: every method step lives outside this package."""
