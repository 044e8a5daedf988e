"""What the ``pulsewire`` subcommands run (``pulsewire.cli`` builds the parser and calls
them): ``echo``, ``connect``, and the argument types and error conventions they share
(:mod:`.args`: usage errors exit 2, runtime errors 1, each one line on stderr)."""
