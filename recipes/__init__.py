"""Build recipes run from a source checkout (`python -m recipes.<name>`); not part of the installed package."""
