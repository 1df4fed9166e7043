"""Entry point for ``python -m orchestrator.dagctl``."""

from orchestrator.dagctl import main

raise SystemExit(main())
