"""`python -m fastgw` is the `fastgw` command."""

import sys

from .cli import main

sys.exit(main())
