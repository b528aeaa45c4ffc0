"""`wem-der`: commands, options, terminal output and exit codes; no business logic."""
