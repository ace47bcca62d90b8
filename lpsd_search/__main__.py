"""``python -m lpsd_search`` runs the command line."""

from __future__ import annotations

import sys

from lpsd_search.cli.main import main

sys.exit(main())
