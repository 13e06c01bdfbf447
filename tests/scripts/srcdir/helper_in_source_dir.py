NAME = "source-dir"
