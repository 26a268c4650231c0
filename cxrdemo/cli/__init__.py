"""The command line: python -m cxrdemo ... The top of cxrdemo: imports every layer below."""
