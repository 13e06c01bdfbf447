"""`python -m mlscore` runs the command-line interface."""

from mlscore.server.cli import main

raise SystemExit(main())
