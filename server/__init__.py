"""HTTP: the Starlette app, routes, errors, settings and the `mlscore` CLI."""
