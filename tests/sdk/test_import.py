"""`ortserve.client` imports and works with onnxruntime and SQLAlchemy unavailable."""

from __future__ import annotations

import asyncio
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["onnxruntime"] = None  # an import of either now raises ImportError
    sys.modules["sqlalchemy"] = None
    import numpy as np
    from ortserve.client import AsyncClient, Client

    with Client(sys.argv[1]) as client:
        result = client.predict("linear", {"x": np.ones((1, 16), np.float32)})
        assert result.version == 1 and result.outputs["y"].shape == (1, 4)
        assert [m.name for m in client.list_models()] == ["add", "linear"]
    assert "onnxruntime" not in {m for m in sys.modules if sys.modules[m] is not None}
    heavy = ("sqlalchemy.", "ortserve.registry", "ortserve.server")
    assert not [m for m in sys.modules if m.startswith(heavy)]
    print("ok")
    """
)


async def test_client_needs_neither_onnxruntime_nor_sqlalchemy(address: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SCRIPT, address, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == "ok"
