"""The optional C accelerator; everything else is in pyproject.toml.

``optional=True``: when the extension cannot be compiled, the package installs as pure
Python (``proxyproto_mw.decoder.ACCELERATED`` is then false).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[Extension("proxyproto_mw._speedups", ["proxyproto_mw/_speedups.c"], optional=True)]
)
