"""The measured launcher that fixes a Python service's command line on Occlum.

Occlum measures no command line: ``occlum run PROGRAM ARGS`` takes PROGRAM and ARGS from the
host, and the LibOS only checks that PROGRAM is under one of Occlum.json's ``entry_points``
(src/libos/src/entry.rs). With the interpreter itself as the entry point, whoever runs the
container could start ``python3.11 -c CODE`` inside the attested enclave, after Occlum's init
fetched the keys and with the decrypted image mounted: every secret would be theirs.

So for a plan with a Python runtime the only entry point is this launcher, a script in the
(measured) image whose first line names the interpreter. Occlum runs it as
``INTERPRETER LAUNCHER HOST-ARGS...`` (do_spawn, exec_loader.rs: a shebang line with the
interpreter only, no options), and the launcher replaces ``sys.argv`` with the planned command
line and runs the planned module or script, ignoring whatever the host passed. The interpreter
is no longer an entry point, so ``occlum run /usr/bin/python3.11 ...`` is refused by the LibOS.

Binary services (TF Serving, OVMS) keep the binary as the entry point: their arguments still
come from the host (see backend.entrypoint), which Occlum cannot prevent for an ELF program.
"""

from __future__ import annotations

import posixpath

from ..plan import ServicePlan
from .bom import StagedFile, sha256_of
from .occlum_json import FRAMEWORK_KEY, OcclumConfigError, locate

#: Where the launcher lives in the image.
LAUNCHER = "/opt/enclave-build/occlum/launch.py"
#: exec_loader.rs parse_script_interpreter looks for the end of the first line in 127 bytes.
SHEBANG_MAX = 127


def _literal(values: list[str]) -> str:
    return "[" + ", ".join(repr(v) for v in values) + "]"


def python_launcher(plan: ServicePlan) -> StagedFile | None:
    """The launcher for *plan* (None when the plan runs no Python). Supports the command lines
    ``INTERPRETER -m MODULE ARGS...`` and ``INTERPRETER SCRIPT ARGS...``; anything else (options
    for the interpreter) is refused, naming the framework."""
    if plan.python is None:
        return None
    argv = list(plan.argv)
    shebang = f"#!{plan.entrypoint}\n"
    if len(shebang.encode()) > SHEBANG_MAX or any(c in plan.entrypoint for c in " \t\n"):
        raise OcclumConfigError(
            locate(plan, FRAMEWORK_KEY),
            f"the interpreter path "
            f"{plan.entrypoint!r} cannot be a script's first line for "
            f"Occlum (at most {SHEBANG_MAX - 3} bytes, no spaces)",
        )
    if len(argv) >= 3 and argv[1] == "-m":
        module, args = argv[2], argv[3:]
        body = (
            f"ARGS = {_literal(args)}\n"
            f"MODULE = {module!r}\n"
            "sys.argv = [MODULE] + ARGS  # runpy puts the module's path in argv[0]\n"
            "# Not the working directory, which `python -m` would put first: Occlum starts\n"
            '# processes in "/", where a hostfs mount could hold a module of the same\n'
            "# name as one the server imports. The module comes from PYTHONPATH (measured).\n"
            "del sys.path[0]  # this launcher's directory\n"
            "runpy.run_module(MODULE, run_name='__main__', alter_sys=True)\n"
        )
    elif len(argv) >= 2 and posixpath.isabs(argv[1]):
        script, args = argv[1], argv[2:]
        body = (
            f"ARGS = {_literal(args)}\n"
            f"SCRIPT = {script!r}\n"
            "sys.argv = [SCRIPT] + ARGS\n"
            "sys.path[0] = os.path.dirname(SCRIPT)  # as `python SCRIPT` does\n"
            "runpy.run_path(SCRIPT, run_name='__main__')\n"
        )
    else:
        raise OcclumConfigError(
            locate(plan, FRAMEWORK_KEY),
            f"the command line {argv!r} "
            "cannot be fixed for Occlum (which takes the command line from "
            "the host): a Python service must run `INTERPRETER -m MODULE "
            "ARGS` or `INTERPRETER /SCRIPT ARGS`, without interpreter "
            "options (use environment variables such as PYTHONUNBUFFERED)",
        )
    text = (
        shebang
        + "# Written by enclave-build (builder/occlum/launcher.py). Occlum takes the command\n"
        "# line from the host, so this measured script is the enclave's only entry point:\n"
        "# it runs the planned command and ignores the arguments the host passes.\n"
        "import os\nimport runpy\nimport sys\n\n" + body
    )
    data = text.encode()
    return StagedFile(LAUNCHER, None, data, 0o755, sha256_of(data))
