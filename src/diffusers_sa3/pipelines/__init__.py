"""Stable Audio 3 pipelines."""
