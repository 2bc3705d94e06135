"""``python -m api`` runs the ``lamina`` command line."""

from api.cli import main

main()
