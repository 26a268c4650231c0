"""The command line: python -m cxrdemo ..."""
