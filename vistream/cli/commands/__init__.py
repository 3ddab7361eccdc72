"""CLI command modules, one per feature area; :mod:`vistream.cli.main` imports them all.

A module here does ``from vistream.cli.main import app, train_app, bench_app, eval_app`` and decorates its
commands. Keep imports of heavy libraries (and of the project modules that load them) inside
the command functions, under a ``# deferred: ...`` comment (tests/test_imports.py checks it):
``vistream --help`` should stay instant. Light imports go at the module top.
"""
