"""``python -m lilypad`` runs the CLI."""

from lilypad.cli import main

main()
