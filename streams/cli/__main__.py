"""`python -m streams.cli`: the `auditwatch` command."""

import sys

from streams.cli.main import main

sys.exit(main())
