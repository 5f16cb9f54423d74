"""Fuzz targets for telex's sans-I/O core and its live server (docs/fuzzing.md)."""
