"""`python -m lguest` is the `lguest` command."""

import sys

from .cli import main

sys.exit(main())
