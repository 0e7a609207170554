"""Failures during a run that are the machine's, not a bug: said in one line instead of a traceback.

A full disk surfaces as an `OSError(ENOSPC)` in the driver, or inside an actor, where Ray wraps it
in a `RayTaskError` whose text is the actor's traceback; both are recognised here.
"""

from __future__ import annotations

import errno
import os
import re
from typing import Optional

_ENOSPC_TEXT = re.compile(r"\[Errno 28\] No space left on device(?:: '([^']+)')?")


def disk_full(exc: BaseException, where: Optional[str] = None) -> Optional[str]:
    """"disk full (ENOSPC) writing PATH" when `exc` (or what it wraps) is a full disk, else None.

    A failed write() names no file; then `where` (the run directory) is named instead.
    """
    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return _say(e.filename, where)
        match = _ENOSPC_TEXT.search(str(e))
        if match:
            return _say(match.group(1), where)
        stack += [e.__cause__, e.__context__, getattr(e, "cause", None)]  # RayTaskError keeps the actor's error as .cause
    return None


def _say(path: Optional[str], where: Optional[str]) -> str:
    if not path and not where:
        return "disk full (ENOSPC: no space left on device)"
    folder = os.path.dirname(os.path.abspath(path)) if path else where
    try:
        st = os.statvfs(folder)
        free = f", {st.f_bavail * st.f_frsize / 2**20:,.0f} MiB free there now"
    except OSError:
        free = ""
    return f"disk full (ENOSPC) writing {path or f'under {where}'}{free}"
