"""The `shoal` command line: argument parsing and one module per subcommand.

Each subcommand parses its options, calls the library, picks a terminal handler and
maps the outcome to an exit status.
"""
