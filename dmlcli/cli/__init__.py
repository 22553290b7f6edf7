"""The ``dml`` command line: one thin module per subcommand."""
