"""`aisle` subcommands, grouped by what they act on."""
