"""``python -m lightning_manifold``: the ``lightning-manifold`` command line (see :mod:`.cli`)."""

from __future__ import annotations

import sys

from lightning_manifold.cli import main

if __name__ == "__main__":
    sys.exit(main())
