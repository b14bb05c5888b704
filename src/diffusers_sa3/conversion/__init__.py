"""Converters from the official Stable Audio 3 checkpoint layout to diffusers-sa3 models."""
