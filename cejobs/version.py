"""The package version, in a module that imports nothing (stores and reports record it)."""

__version__ = "0.1.0"
