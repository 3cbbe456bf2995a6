"""``python -m conveyor.pipelines.cli``: the same as the ``conveyor`` command."""

import sys

from conveyor.pipelines.cli.commands import main

sys.exit(main())
