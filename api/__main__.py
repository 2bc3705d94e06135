"""``python -m lamina.api`` runs the ``lamina`` command line."""

from lamina.api.cli import main

main()
