"""nitp-eval mteb: frozen mean-pooled hidden states on MTEB tasks (docs/mteb.md)."""

from __future__ import annotations

import os
import sys
import tempfile


def import_mteb():
    """Import mteb without its import-time write: it creates ~/.cache/mteb (or $MTEB_CACHE) for a
    default result cache that we never use (we pass cache=None). Unless the user set MTEB_CACHE,
    point it at a throw-away directory for the import."""
    if "mteb" in sys.modules or "MTEB_CACHE" in os.environ:
        import mteb

        return mteb
    with tempfile.TemporaryDirectory(prefix="nitp-mteb-") as tmp:
        os.environ["MTEB_CACHE"] = tmp
        try:
            import mteb
        finally:
            del os.environ["MTEB_CACHE"]
    return mteb
