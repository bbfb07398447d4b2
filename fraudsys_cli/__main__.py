"""``python -m fraudsys_cli``: the same as the ``fraudsys`` command."""

from fraudsys_cli import main

main()
