"""Fixtures of the fuzz tests.

``parser`` runs a test on both receive paths of the protocol core: the C accelerator (when
built) and pure Python (as with ``PULSEWIRE_NO_EXTENSIONS=1``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pulsewire.protocol import connection, frames


@pytest.fixture(params=["speedups", "python"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "speedups":
        if not frames.SPEEDUPS:
            pytest.skip(frames.SPEEDUPS_ABSENT)
    else:
        for module in (connection, frames):
            monkeypatch.setattr(module, "apply_mask", frames._py_apply_mask)
            monkeypatch.setattr(module, "build_frame", frames._py_build_frame)
        monkeypatch.setattr(connection, "scan_messages", None, raising=False)
    yield request.param
