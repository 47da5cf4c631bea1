"""``python -m protorefine.cli``: the ``protorefine`` command."""

from protorefine.cli import main

raise SystemExit(main())
