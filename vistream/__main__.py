"""``python -m vistream``: the same command as the ``vistream`` script."""

from vistream.cli.main import main

main()
