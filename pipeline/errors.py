"""What an error row's text says about it: may a retry succeed, and which HTTP status it is.

Error rows carry a short reason (docs/annotate.md lists them). Two kinds matter to users:
- retryable: the row may succeed if asked again: the model failed on its group
  (`model: ...`, out-of-memory included), an image could not be read or fetched (`cannot
  read ...`, `cannot fetch ...`, `cannot resolve ...`, a server's 429 or 5xx), or the quota
  refused it (`quota: ...`: asked again under a larger quota). `retry_errors=true` asks
  these again when a job resumes;
- the rest are the input's: a corrupt or missing image, a bad request, an unknown task.
  Asking again gives the same error, so they count as done.
`http_status` is the status an OpenAI Batch API output line gives the row: 400 for the
input's errors, 429 for the quota's, 500 for the others. Pure Python.
"""

from __future__ import annotations

import re

_RETRYABLE = re.compile(r"^(model:|quota:|cannot read |cannot fetch |cannot resolve )"
                        r"|answered HTTP (429|5\d\d)\b")


def retryable(error: str | None) -> bool:
    """An error row that may succeed when asked again (see the module docstring)."""
    return bool(error) and _RETRYABLE.search(error) is not None


def http_status(error: str) -> int:
    if error.startswith("quota:"):
        return 429
    return 500 if retryable(error) else 400
