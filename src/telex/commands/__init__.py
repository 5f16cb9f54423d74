"""The subcommands of ``telex``, a module each; ``telex.cli`` gathers them."""
