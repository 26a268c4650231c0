"""`python -m cxrdemo ...`: see cxrdemo/cli/main.py."""

import sys

from cxrdemo.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
