"""The entry-script contract: loading, input modes, the scoring pipeline, Swagger and model paths."""
