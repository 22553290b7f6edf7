"""The package version (kept apart so that every layer can record it without importing
``dmlcli`` itself)."""

__version__ = "0.1.0"
