"""``python -m saia.entrypoint``: the same program as the saia-entrypoint script."""

from saia.entrypoint.main import main

raise SystemExit(main())
