"""The ringcast command, whose subcommands span the layers (segments, queues, SWMR)."""
