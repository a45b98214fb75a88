"""``enclave-build dev``: build if stale, a local secret server, ``run --simulate``, readiness,
and what to send the model (or one request with ``--once``). See :mod:`.session`.

* :mod:`.session` -- the steps, in order, and stopping everything;
* :mod:`.local_secrets` -- the synthetic PKI and secret-server configuration kept in the
  project's ``.enclave-build/``, and what answers at the build's secret-server address;
* :mod:`.processes` -- child processes with prefixed logs, stopped as a whole;
* :mod:`.requests` -- KServe v2 metadata, requests (generated or from a file), outputs' digest;
* :mod:`.snippets` -- the curl line and the tritonclient snippet.
"""

from .session import DevError, DevOptions, DevSession, once_lines, summary

__all__ = ["DevSession", "DevOptions", "DevError", "summary", "once_lines"]
