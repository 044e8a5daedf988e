"""Build script: metadata is in pyproject.toml; this file only adds the optional C accelerator.

``optional=True``: where no compiler is available the build carries on without it and
pulsewire runs its pure-Python path (also selectable with PULSEWIRE_NO_EXTENSIONS=1).
"""

import os

from setuptools import Extension, setup

ext_modules = []
if not os.environ.get("PULSEWIRE_NO_EXTENSIONS"):
    ext_modules.append(
        Extension(
            "pulsewire.protocol._speedups",
            ["src/pulsewire/protocol/_speedups.c"],
            optional=True,
            extra_compile_args=["-O3"] if os.name == "posix" else [],
        )
    )

setup(ext_modules=ext_modules)
