"""``python -m lamina`` runs the ``lamina`` command line."""

from lamina.api.cli import main

main()
