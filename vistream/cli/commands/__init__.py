"""CLI command modules, one per feature area; :mod:`vistream.cli.main` imports them all.

A module here does ``from vistream.cli.main import app, train_app, bench_app, eval_app`` and decorates its
commands. Keep imports of heavy libraries inside the command functions: ``vistream --help``
should stay instant.
"""
