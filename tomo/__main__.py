"""``python -m tomo`` runs the ``tomo`` command."""

import sys

try:  # Ctrl-C before the command line is read: one line and exit code 130, as later on
    from tomo.cli.main import main
except KeyboardInterrupt:
    print("tomo: error: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
