"""`python -m mlustre.fuzz`: the long fuzzing campaign (scripts/fuzz)."""

import sys

from .campaign import main

sys.exit(main())
