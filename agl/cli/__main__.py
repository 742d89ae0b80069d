"""`python -m agl.cli ...` is the same as `agl ...`."""

import sys

from agl.cli import main

sys.exit(main())
