"""Entry point for ``python -m orchestrator``."""

from orchestrator.serving import main

raise SystemExit(main())
