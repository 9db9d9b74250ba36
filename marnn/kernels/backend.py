"""Which backend the kernels run on, and the thread pool their replica / string blocks share.

:data:`FUSED_BACKEND` is the one switch of both compiled paths: the fused LSTM /
superposition kernel (:mod:`marnn.kernels.fused_lstm`) and the RNS / VRNS step
(:mod:`marnn.kernels.rns_tape`). ``"auto"``: on the CPU the compiled (Numba)
loops where they apply, else the NumPy loop; torch elsewhere. ``"numpy"`` /
``"torch"``: the array loops (and the torch reference step of the RNS), which
tests use to check those paths on the CPU. ``$MARNN_FUSED_BACKEND`` sets the
default (e.g. ``numpy`` to repeat runs made before the compiled loop); a record
keeps it (``env.fused_backend``).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

BACKENDS = ("auto", "numpy", "torch")
FUSED_BACKEND = os.environ.get("MARNN_FUSED_BACKEND", "auto")

_POOL = None


def parallel(fn, calls):
    """``[fn(*args) for args in calls]``, in threads when there is more than one call."""
    global _POOL
    if len(calls) == 1:
        return [fn(*calls[0])]
    if _POOL is None or _POOL._max_workers < len(calls):
        from concurrent.futures import ThreadPoolExecutor
        _POOL = ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="marnn-fused")
    return [f.result() for f in [_POOL.submit(fn, *args) for args in calls]]


def cache_follows(sources, *dispatchers) -> bool:
    """Empty the Numba cache of ``dispatchers`` when the files ``sources`` (the other modules
    whose compiled functions they call) changed since it was written; returns whether it did.

    Numba keys a cached function by its own file only, so a function that calls into
    another module would keep serving the code that module had when it was cached. The
    digest of ``sources`` is kept beside the cache (``<first source's stem>-<first qualname>.deps``); where the
    cache folder cannot be written nothing is kept, and the next process checks again."""
    digest = hashlib.sha256(b"".join(Path(f).read_bytes() for f in sources)).hexdigest()
    folder = Path(dispatchers[0]._cache.cache_path)
    stamp = folder / f"{Path(sources[0]).stem}-{dispatchers[0].py_func.__qualname__}.deps"
    try:
        if stamp.read_text() == digest:
            return False
    except OSError:
        pass
    for d in dispatchers:
        d._cache.flush()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = stamp.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(digest)
        os.replace(tmp, stamp)
    except OSError:
        pass
    return True
