"""Pipeline definitions: the training and monitoring pipelines, the compile targets, the
settings every step gets, and compiling them to YAML."""
