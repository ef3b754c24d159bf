"""`python -m orchestrator`: the same CLI as the `orchestrator` script."""

import sys

from orchestrator.cli import main

sys.exit(main())
