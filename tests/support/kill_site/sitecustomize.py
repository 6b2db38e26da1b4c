"""Imported by Python at start-up when this folder leads ``PYTHONPATH``: installs the test's kill
point (``tests/support/kill_points.py``). Test-only; never on a production path."""

from tests.support.kill_points import install

install()
