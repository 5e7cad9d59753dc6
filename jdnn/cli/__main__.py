"""`python -m jdnn.cli ...`, the same as the `jdnn` command."""

import sys

from jdnn.cli.commands import main

sys.exit(main())
