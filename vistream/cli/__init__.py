"""The ``vistream`` command line: argument parsing, then one call into the layers below.

:mod:`vistream.cli.main` holds the typer apps; each module of :mod:`vistream.cli.commands`
adds the commands of one feature area to them.
"""
