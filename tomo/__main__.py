"""``python -m tomo`` runs the ``tomo`` command."""

import sys

from tomo.cli.main import main

sys.exit(main())
