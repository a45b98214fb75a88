"""The RA-TLS secret server: it releases keys to attested enclaves, wire-compatible with
Gramine's ``libsecret_prov_attest.so`` and Occlum's ``ratls.GrSecret``.

One module per job:

* :mod:`.secret_server` — :class:`SecretServer`: the configuration served, its listeners, the
  processes serving them; ``reload()`` (SIGHUP in the CLI) re-reads the policy and the TLS
  certificate and key, ``shutdown()`` stops accepting and waits for connections in flight;
* :mod:`.supervisor` — worker processes (``[server] processes``, default: the cores this
  process may use) forked at ``start()``, sharing the listening sockets; reload and stop
  commands, replacement of workers that die. With ``processes = 1`` everything runs in the
  calling process;
* :mod:`.listener` and :mod:`.admission` — accepting, the connection caps (in total and per
  peer address; excess connections are refused at once), each connection's deadline from the
  moment it was accepted (also while it waits for a worker thread), the TLS handshake;
* :mod:`.secret_prov` and :mod:`.grsecret_service` — the two protocols, behind
  :class:`.protocol.SecretProtocol`: Gramine's secret_prov exchange (and owners' key upload) on
  ``[server] listen``, Occlum's GrSecret on ``[grsecret] listen`` (mutual RA-TLS);
* :mod:`.verifier` — what a client's RA-TLS certificate proves (evidence bound to the key,
  quote verified against collateral and root, with a per-process verification cache);
* :mod:`.decide` — every policy decision as one pure function: quote policy (TCB status,
  advisories, attributes, DEBUG), Occlum's client filter, identity match, which secret (TLS
  server name or GrSecret name);
* :mod:`.audit` — typed audit events and their one writer: every connection (GrSecret: every
  call) ends in exactly one JSON line with a decision (``allow``, ``deny``, or on a server with
  an RA-TLS identity ``identity-only``) and a reason, never secret bytes. Lines from all
  processes go to one file opened O_APPEND, each line a single write;
* :mod:`.state`, :mod:`.tls`, :mod:`.identity`, :mod:`.secret_source` — what a reload
  replaces, the TLS contexts, the server's own RA-TLS certificates, a released secret's bytes;
* :mod:`.run` — the program: start-up warnings, signals, the supervising loop.

No TLS session tickets are issued, and the TLS version can be capped at 1.2 for Gramine 1.8
clients.
"""

from .run import serve, startup_warnings
from .secret_server import SecretServer
from .supervisor import ServerError

__all__ = ["SecretServer", "ServerError", "serve", "startup_warnings"]
