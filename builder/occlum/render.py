"""ServicePlan -> Occlum 0.31 configuration: Occlum.json, a copy_bom YAML, init_ra_conf.json.

Occlum-only knobs come from the spec's optional ``[occlum]`` section (builder/occlum/spec_section.py),
carried in the plan as :class:`builder.occlum.spec_section.OcclumPlanOptions`; everything else from the
libOS-neutral plan (see occlum_json.py for the mapping, bom.py for what is copied from where,
init_ra.py for how keys and the encrypted image work).

Every document is checked against Occlum 0.31's parser rules (rules.py) before it is returned;
a refusal names the spec key the value came from (``spec.toml:14: enclave.size: ...``), located
through the plan's :class:`builder.plan.SpecOrigin`.

Encrypted models: Occlum has no Gramine protected files. When the plan has ENCRYPTED files (or
``occlum.encrypt_image``), the whole SEFS image is encrypted (``occlum build --image-key``) with
the wrap key named by :attr:`OcclumConfig.image_key`, which Occlum's init fetches over RA-TLS
as the secret ``image_key``; the plan's provisioned keys are fetched to
``KEYS_DIR/NAME`` (:attr:`OcclumConfig.kms_keys`).
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass
from typing import Any

from ..errors import EnclaveBuildError
from ..plan import KeyDelivery, ServicePlan
from ..rootfs import RootFS
from . import rules
from .bom import StagedFile, bom, to_yaml
from .configure import image_key_name
from .init_ra import KmsKey, init_ra_conf, kms_keys
from .launcher import python_launcher
from .occlum_json import (
    FRAMEWORK_KEY,
    KEYS_DIR,
    OCCLUM_GLIBC_LIB,
    OcclumConfigError,
    locate,
    occlum_json,
)
from .spec_section import OcclumPlanOptions, plan_options

ROOTFS = "/eb/rootfs"  # where the build container sees the base image's root filesystem (read-only)
STAGE = "/eb/stage"  # where it sees the files the plan generates/adds (plan.files), laid out by their dest path

__all__ = [
    "ROOTFS",
    "STAGE",
    "KEYS_DIR",
    "OcclumConfig",
    "OcclumOptions",
    "OcclumConfigError",
    "KmsKey",
    "render",
]


@dataclass(frozen=True)
class OcclumOptions:
    """What render needs besides the plan."""

    #: The base image's root filesystem as the builder sees it, to resolve the Python and ELF
    #: closures (required when the plan has a Python runtime or paths trusted when present).
    rootfs: RootFS | None = None
    stage: str = STAGE
    rootfs_dir: str = ROOTFS


@dataclass(frozen=True)
class OcclumConfig:
    occlum_json: bytes  # Occlum.json for the instance directory
    bom_yaml: bytes  # copy_bom YAML: plan files from STAGE, the runtime from ROOTFS
    init_ra_conf: bytes | None  # None when init fetches nothing (no keys, clear image)
    entry_points: tuple[str, ...]
    kms_keys: tuple[KmsKey, ...]  # what init fetches (the image key first, if any)
    #: The wrap key (keys_dir/NAME) that encrypts the SEFS image: give it to
    #: ``occlum build --image-key`` in init_ra.image_key_text form; None = integrity-only image.
    image_key: str | None
    #: What ``occlum run`` starts: the launcher for Python services, else the entrypoint.
    program: str = ""
    #: Files the renderer generates (the launcher), staged and copied like the plan's files.
    generated: tuple[StagedFile, ...] = ()


def _spec_key(origins: dict[str, str], path: str, default: str) -> str:
    """The spec key behind JSON *path*: the longest matching origin prefix."""
    probe = path
    while probe:
        if probe in origins:
            return origins[probe]
        shorter = re.sub(r"(\.?[^.\[]*|\[\d+\])\Z", "", probe)
        if shorter == probe:  # nothing left to strip (never loop on an odd path)
            break
        probe = shorter
    return default


def _refuse(
    plan: ServicePlan, exc: rules.OcclumRuleError, origins: dict[str, str], default: str
) -> OcclumConfigError:
    key = _spec_key(origins, exc.path, default)
    return OcclumConfigError(
        locate(plan, key), f"{exc.document} {exc.path or '(top)'}: {exc.reason}"
    )


#: Directories a hostfs mount may never cover, besides every file the bom copies and every
#: other mount: what `occlum new` puts in the image itself (Occlum's glibc, the loader, musl's
#: libc in /lib, /bin) and /etc.
HOSTFS_FORBIDDEN = (OCCLUM_GLIBC_LIB, "/lib64", "/lib", "/bin", "/etc")


def _bom_paths(bom_doc: dict[str, Any]) -> list[str]:
    """Every image path the bom fills."""
    out = []
    for target in bom_doc["targets"]:
        for source in target.get("copy", []):
            for entry in source.get("files", []):
                name = entry if isinstance(entry, str) else entry.get("rename") or entry["name"]
                out.append(posixpath.join(target["target"], name))
    return out


#: Python's library directories, of any version, under /usr and /usr/local (lib or lib64):
#: the standard library, its zip, lib-dynload, site-packages and dist-packages.
_PYTHON_LIB = re.compile(r"/usr(/local)?/lib(64)?/python[0-9][^/]*")


def python_import_dirs(plan: ServicePlan) -> list[str]:
    """Directories whose content Python may run before (or instead of) the measured launcher:
    the plan's sys.path (PYTHONPATH, the standard library, its site directories) and the user
    site directories (``~/.local`` for the plan's HOME, /tmp and /root: a ``.pth`` file there
    runs at interpreter start, even with PYTHONNOUSERSITE unset by mistake)."""
    dirs = [p for p in plan.env.get("PYTHONPATH", "").split(":") if p.startswith("/")]
    argv = list(plan.argv)
    if len(argv) >= 2 and argv[1] != "-m" and posixpath.isabs(argv[1]):
        dirs.append(posixpath.dirname(argv[1]))  # a script's directory comes first
    if plan.python is not None:
        dirs += [plan.python.stdlib, *plan.python.site_dirs]
    homes = {plan.env.get("HOME", "/tmp"), "/tmp", "/root"}
    dirs += [posixpath.join(home, ".local") for home in sorted(homes)]
    return [posixpath.normpath(d) for d in dirs]


def _python_path_hit(plan: ServicePlan, target: str) -> str | None:
    """The import-path directory a hostfs mount at *target* would cover or sit inside."""
    for directory in python_import_dirs(plan):
        if (
            target == directory
            or target.startswith(directory + "/")
            or directory.startswith(target.rstrip("/") + "/")
        ):
            return directory
    match = _PYTHON_LIB.match(target)
    if match is not None:
        return match.group(0)
    for example in (
        "/usr/lib/python3",
        "/usr/local/lib/python3",
        "/usr/lib64/python3",
        "/usr/local/lib64/python3",
    ):
        if example.startswith(target.rstrip("/") + "/"):
            return posixpath.dirname(example) + "/python*"
    return None


def _check_hostfs(
    plan: ServicePlan, opts: OcclumPlanOptions, mounts: list[dict[str, Any]], image_paths: list[str]
) -> None:
    """A hostfs mount shows a host directory in place of whatever the image has there, and it
    is mounted after the others: one over a measured file (the program, its libraries, a model)
    would let the host choose what runs, one over (or inside) the key ramfs would make
    Occlum's init write the fetched keys to the host's disk, and one over or inside a directory
    on Python's import path (any Python's site or dist-packages, the user site, PYTHONPATH)
    would let a host-written ``.pth`` file or module run in the enclave before the measured
    launcher. Refuse all three."""
    others = {m["target"] for m in mounts if m["type"] != "hostfs" and m["target"] != "/"}
    covered = set(others)
    covered |= set(HOSTFS_FORBIDDEN) | {KEYS_DIR} | set(image_paths)
    for target, _ in opts.hostfs:
        hit: str | None
        if target.startswith(KEYS_DIR + "/"):
            hit = KEYS_DIR
        else:
            hit = next(
                (
                    p
                    for p in sorted(covered)
                    if p == target or p.startswith(target.rstrip("/") + "/")
                ),
                None,
            )
        if hit is None:
            python_dir = _python_path_hit(plan, target)
            if python_dir is None:
                continue
            raise OcclumConfigError(
                locate(plan, f"occlum.hostfs.{target}"),
                f"a hostfs mount at {target} would reach {python_dir}, on Python's import "
                "path: a .pth file or module the host writes there would run in the enclave "
                "before the measured launcher; allowed: a directory the image does not use, "
                'e.g. "/host/data"',
            )
        what = (
            "the ramfs Occlum's init writes the fetched keys to (they would land on the "
            "host's disk)"
            if hit == KEYS_DIR
            else f"the {hit} mount"
            if hit in others
            else f"{hit} of the measured image (the host would choose its content)"
        )
        raise OcclumConfigError(
            locate(plan, f"occlum.hostfs.{target}"),
            f"a hostfs mount at {target} would cover {what}; allowed: a "
            'directory the image does not use, e.g. "/host/data"',
        )


def _dumps(doc: Any) -> bytes:
    return (json.dumps(doc, indent=4, ensure_ascii=True) + "\n").encode()


def _image_key(plan: ServicePlan, opts: OcclumPlanOptions) -> str | None:
    name = image_key_name(plan)
    if name is not None and plan.secrets is None:
        raise OcclumConfigError(
            locate(plan, "occlum.encrypt_image"),
            "an encrypted image needs its key from a secret server at start: set [secrets] server",
        )
    return name


def render(plan: ServicePlan, options: OcclumOptions | None = None) -> OcclumConfig:
    """Occlum.json, the copy_bom YAML and init_ra_conf.json for *plan*, checked against
    Occlum 0.31's rules. Raises :class:`OcclumConfigError` naming the spec key."""
    options = options or OcclumOptions()
    opts = plan_options(plan)
    if plan.secrets is not None and plan.secrets.delivery is KeyDelivery.IN_ENCLAVE:
        raise EnclaveBuildError(
            "internal: the plan was not configured for Occlum (its "
            "enclave_build_configure hook, builder.occlum.configure, did "
            "not run): build plans with builder.build.make_plan"
        )
    image_key = _image_key(plan, opts)
    keys = kms_keys(plan, image_key, KEYS_DIR)
    if image_key is not None and rules.IMAGE_KEY_SECRET in {k.secret for k in keys[1:]}:
        raise OcclumConfigError(
            locate(plan, "models"),
            f"a key may not be named "
            f"{rules.IMAGE_KEY_SECRET!r}: Occlum's init uses that name for "
            "the image key",
        )

    launcher = python_launcher(plan)
    program = launcher.dest if launcher is not None else plan.entrypoint
    rendered = occlum_json(plan, opts, keys=any(k.path for k in keys), entry_point=program)
    try:
        rules.check_occlum_json(rendered.doc, edmm=plan.enclave.edmm)
    except rules.OcclumRuleError as exc:
        raise _refuse(plan, exc, rendered.origins, FRAMEWORK_KEY) from None

    conf = None
    if keys:
        if plan.secrets is None:
            raise OcclumConfigError(
                locate(plan, "secrets.server"),
                "required: Occlum's init fetches the keys from a secret server",
            )
        if not opts.server_identities:
            raise OcclumConfigError(
                locate(plan, "occlum.server_measurements"),
                "required when the enclave fetches keys: Occlum's init verifies the secret "
                "server's own enclave (mutual RA-TLS), so give the measurements.json of the "
                "secret-server enclave build",
            )
        doc = init_ra_conf(plan, opts, keys)
        origins = {
            "kms_server": "secrets.server",
            "kms_keys": "models",
            "ra_config": "occlum.server_measurements",
        }
        try:
            rules.check_init_ra_conf(doc)
        except rules.OcclumRuleError as exc:
            raise _refuse(plan, exc, origins, "secrets") from None
        conf = _dumps(doc)

    generated = (launcher,) if launcher is not None else ()
    if launcher is not None and any(f.dest == launcher.dest for f in plan.image_files()):
        raise OcclumConfigError(
            locate(plan, FRAMEWORK_KEY),
            f"{launcher.dest} is where the "
            "Occlum backend puts its launcher; the plan adds a file there",
        )
    bom_doc = bom(
        plan,
        options.rootfs,
        options.stage.rstrip("/"),
        options.rootfs_dir.rstrip("/"),
        rendered.mount_targets,
        generated,
    )
    try:
        rules.check_bom(bom_doc)
    except rules.OcclumRuleError as exc:
        raise _refuse(plan, exc, {}, FRAMEWORK_KEY) from None
    _check_hostfs(plan, opts, rendered.doc["mount"], _bom_paths(bom_doc))
    header = (
        f"copy_bom for {plan.service} (written by enclave-build; "
        f"plan files from {options.stage}, the runtime from {options.rootfs_dir})"
    )
    return OcclumConfig(
        occlum_json=_dumps(rendered.doc),
        bom_yaml=to_yaml(bom_doc, header),
        init_ra_conf=conf,
        entry_points=tuple(rendered.doc["entry_points"]),
        kms_keys=keys,
        image_key=image_key,
        program=program,
        generated=generated,
    )
