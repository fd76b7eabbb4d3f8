"""One module per psci-hook subcommand; each defines HELP, configure() and run()."""
