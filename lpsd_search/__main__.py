"""``python -m lpsd_search`` runs the command line."""

from __future__ import annotations

import sys

from lpsd_search.cli import main

sys.exit(main())
