"""Shared helpers for the command-line tests: run ``main`` and restore what it changes."""

import logging

import pytest
import torch

from sparse_transformer.cli import main


@pytest.fixture(autouse=True)
def _restore_logging_and_threads():
    """``main`` sets up logging and torch threads for the process; put them back after a test.
    Autouse in every test module that imports it."""
    logger = logging.getLogger("sparse_transformer")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    threads = torch.get_num_threads()
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate
    torch.set_num_threads(threads)


def run(capsys, *argv):
    """``main(argv)`` -> (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err
