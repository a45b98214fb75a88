"""The Occlum backend against hostile inputs and specs its authors never saw.

Each test is a regression test for a defect found by attacking the backend: model directories
with links out of them, names copy_bom would misread, a base image with link loops and FIFOs,
hostfs mounts over measured files or the key ramfs, sizes sgx_sign refuses, ids Occlum drops,
host-controlled loader variables, a host-chosen command line, and a framework Occlum cannot run.
All of them run without Docker (render and staging only), in a few seconds together.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from enclave_build.builder.occlum import render as render_module
from enclave_build.builder.occlum import rules
from enclave_build.builder.occlum.backend import entrypoint, stage_plan_files
from enclave_build.builder.occlum.launcher import LAUNCHER, python_launcher
from enclave_build.builder.occlum.render import KEYS_DIR, OcclumConfigError, OcclumOptions, render
from enclave_build.builder.occlum.spec_section import DebugServerWarning
from enclave_build.builder.rootfs import RootFS
from enclave_build.builder.spec import SpecError

from .conftest import saved_model_dir, sgx_key_pem, tflite_bytes
from .test_occlum_config import SERVER, _valid_occlum_json, example_spec, plan_of, write_spec

# tfserving: a framework whose model is a directory (a SavedModel), so the directory's
# entries are what the backend copies
CLEAR_MODEL_DIR = """[service]
name = "lite"
framework = "tfserving"
libos = "occlum"

[[models]]
name = "face"
path = "../mdir"
encrypt = false

[signing]
key = "../keys/enclave-key.pem"
"""


def _model_dir(root: Path, names=("model.tflite",)) -> Path:
    """A SavedModel directory (saved_model.pb) holding files named *names* too."""
    directory = saved_model_dir(root / "examples" / "mdir")
    for name in names:
        (directory / name).write_bytes(tflite_bytes(name.encode()))
    return directory


def _copied(bom_yaml: bytes, prefix: str) -> dict[str, str]:
    """image path -> copy_bom's source directory, for targets under *prefix*."""
    out = {}
    for target in yaml.safe_load(bom_yaml)["targets"]:
        for source in target.get("copy", []):
            for entry in source["files"]:
                path = f"{target['target']}/{entry.get('rename') or entry['name']}"
                if path.startswith(prefix):
                    out[path] = source["from"]
    return out


def _render(spec: Path, plugin_registry, standin_root, mutate=None):
    plan = plan_of(spec, plugin_registry)
    if mutate:
        mutate(plan)
    return plan, render(plan, OcclumOptions(rootfs=RootFS(standin_root)))


# --- the model directory ---------------------------------------------------------------------


def test_links_fifos_and_loops_in_a_model_directory_never_reach_the_image(
    tmp_path, plugin_registry, standin_root
):
    models = _model_dir(tmp_path)
    secret = tmp_path / "signing-key.pem"
    secret.write_text("-----BEGIN PRIVATE KEY----- not for the image\n")
    (models / "key.pem").symlink_to(secret)  # a file outside the directory
    (models / "etc").symlink_to("/etc")  # a directory outside it
    (models / "loop").symlink_to(models)  # a loop
    os.mkfifo(models / "pipe")  # would block a copy forever
    from enclave_build.builder.model_files import SkippedModelFile

    with pytest.warns(SkippedModelFile) as caught:  # what is left out is said, by name
        plan, config = _render(write_spec(tmp_path, CLEAR_MODEL_DIR), plugin_registry, standin_root)
    said = " ".join(str(w.message) for w in caught)
    assert "key.pem: a symbolic link" in said and "etc: a symbolic link to /etc" in said
    assert sorted(_copied(config.bom_yaml, "/models/")) == [
        "/models/face/1/model.tflite",
        "/models/face/1/saved_model.pb",
        "/models/face/1/variables/variables.index",
    ]

    stage = tmp_path / "stage"
    stage.mkdir()
    with pytest.warns(SkippedModelFile):
        stage_plan_files(plan, stage, config.generated)
    staged = sorted(
        p.relative_to(stage / "models").as_posix() for p in (stage / "models").rglob("*")
    )
    assert staged == [
        "face",
        "face/1",
        "face/1/model.tflite",
        "face/1/saved_model.pb",
        "face/1/variables",
        "face/1/variables/variables.index",
    ]
    assert not any(b"not for the image" in p.read_bytes() for p in stage.rglob("*") if p.is_file())


NAMES = [
    'a"b',
    "c: d",
    "#e",
    "&f",
    "*g",
    "!h",
    "{i",
    "-j",
    "? k",
    "ü ñ 名",
    "sp ace",
    "b\\s",
    "'q'",
    "%l",
    "@m",
    "`n`",
    "[o]",
    "|p",
    ">r",
]


def test_yaml_special_names_round_trip_through_a_strict_parser(
    tmp_path, plugin_registry, standin_root
):
    _model_dir(tmp_path, NAMES)
    _, config = _render(write_spec(tmp_path, CLEAR_MODEL_DIR), plugin_registry, standin_root)
    copied = _copied(config.bom_yaml, "/models/face/1/")
    assert sorted(p.rsplit("/", 1)[1] for p in copied) == sorted(
        NAMES + ["saved_model.pb", "variables.index"]
    )
    json.loads(config.occlum_json)


@pytest.mark.parametrize(
    "name, words",
    [
        ("$HOME", "'$'"),
        ("x${A}y", "'$'"),
        ("new\nline", "control character"),
        ("tab\there", "control character"),
    ],
)
def test_names_copy_bom_would_misread_are_refused_naming_models(
    name, words, tmp_path, plugin_registry, standin_root
):
    _model_dir(tmp_path, [name])
    spec = write_spec(tmp_path, CLEAR_MODEL_DIR)
    finished: list[BaseException] = []

    def attempt() -> None:
        try:
            _render(spec, plugin_registry, standin_root)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            finished.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(20)
    assert finished, "render did not finish (a refusal must never loop)"
    assert isinstance(finished[0], OcclumConfigError), finished[0]
    message = str(finished[0])
    assert f"{spec}:6: models: " in message and words in message and "rename" in message


def test_a_rule_path_without_origin_maps_to_the_default_key():
    # The path of a bom rule has no origin: mapping it must end, not loop.
    found: list[str] = []
    worker = threading.Thread(
        target=lambda: found.append(
            render_module._spec_key({}, "targets[3].copy[0].files[0].name", "dflt")
        ),
        daemon=True,
    )
    worker.start()
    worker.join(5)
    assert found == ["dflt"]
    assert (
        render_module._spec_key({"env": "service.framework"}, "env.untrusted[0]", "x")
        == "service.framework"
    )


def test_two_files_for_one_image_path_are_refused(tmp_path, plugin_registry, standin_root):
    _model_dir(tmp_path)
    spec = write_spec(tmp_path, CLEAR_MODEL_DIR)

    def duplicate(plan):
        plan.add_file(None, "/models/face/1/model.tflite", data=b"other content")

    with pytest.raises(OcclumConfigError, match=r"/models/face/1/model.tflite is added twice"):
        _render(spec, plugin_registry, standin_root, duplicate)


# --- the base image --------------------------------------------------------------------------


@pytest.fixture
def hostile_root(standin_root, tmp_path) -> Path:
    """The stand-in rootfs plus a trusted directory with a loop, links out and a FIFO."""
    import shutil

    root = tmp_path / "rootfs"
    shutil.copytree(standin_root, root, symlinks=True)
    share = root / "usr/share/app"
    share.mkdir(parents=True)
    (share / "data.bin").write_bytes(b"data")
    (share / "loop").symlink_to("/usr/share/app")  # absolute: inside the root
    (share / "up").symlink_to("../../..")  # the root itself
    (share / "shadow").symlink_to("/etc/shadow")  # not in the root: dangling
    (share / "passwd").symlink_to("../../../../../../etc/passwd")  # clamped to the root's
    os.mkfifo(share / "pipe")
    os.mkfifo(root / "usr/share/fifo")
    return root


def test_trusted_directory_with_link_loops_and_fifos(tmp_path, plugin_registry, hostile_root):
    plan = plan_of(example_spec("tflite", tmp_path), plugin_registry)
    plan.trusted.append("/usr/share/app/")
    finished: list = []
    worker = threading.Thread(
        target=lambda: finished.append(render(plan, OcclumOptions(rootfs=RootFS(hostile_root)))),
        daemon=True,
    )
    worker.start()
    worker.join(20)
    assert finished, "render did not finish on a link loop"
    copied = _copied(finished[0].bom_yaml, "/usr/share/app/")
    assert copied == {
        "/usr/share/app/data.bin": "/eb/rootfs/usr/share/app",
        "/usr/share/app/passwd": "/eb/rootfs/etc",
    }


def test_a_trusted_fifo_is_refused(tmp_path, plugin_registry, hostile_root):
    plan = plan_of(example_spec("tflite", tmp_path), plugin_registry)
    plan.trusted.append("/usr/share/fifo")
    with pytest.raises(OcclumConfigError, match=r"/usr/share/fifo .*\(a FIFO\)"):
        render(plan, OcclumOptions(rootfs=RootFS(hostile_root)))


# --- hostfs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target, words",
    [
        ("/run", "fetched keys"),
        ("/run/enclave-build", "fetched keys"),
        (KEYS_DIR + "/sub", "fetched keys"),
        ("/usr", "/usr/bin/python3.11 of the measured image"),
        ("/models", "of the measured image"),
        ("/etc", "/etc of the measured image"),
        ("/opt/occlum", "/opt/occlum/glibc/lib"),
        ("/opt/enclave-build", "measured image"),
        ("/proc/self", "inside /proc"),
        ("/dev/shm", "inside /dev"),
    ],
)
def test_hostfs_over_measured_files_or_the_keys_is_refused(
    target, words, tmp_path, plugin_registry, standin_root
):
    spec = example_spec("tflite", tmp_path, f'[occlum.hostfs]\n"{target}" = "/srv/data"\n')
    with pytest.raises(OcclumConfigError) as info:
        _render(spec, plugin_registry, standin_root)
    line = next(
        i for i, t in enumerate(spec.read_text().splitlines(), 1) if t.startswith(f'"{target}"')
    )
    assert f"spec.toml:{line}: occlum.hostfs.{target}: " in str(info.value)
    assert words in str(info.value)


def test_hostfs_elsewhere_is_allowed(tmp_path, plugin_registry, standin_root):
    spec = example_spec("tflite", tmp_path, '[occlum.hostfs]\n"/host/data" = "/srv/data"\n')
    _, config = _render(spec, plugin_registry, standin_root)
    assert {"target": "/host/data", "type": "hostfs", "source": "/srv/data"} in json.loads(
        config.occlum_json
    )["mount"]


@pytest.mark.parametrize("source", ["../../etc", "relative", "/a/../b", "/a\\nb"])
def test_hostfs_source_must_be_a_plain_absolute_path(source, tmp_path, plugin_registry):
    spec = example_spec("tflite", tmp_path, f'[occlum.hostfs]\n"/host/data" = "{source}"\n')
    with pytest.raises(SpecError, match=r"occlum.hostfs./host/data: .*absolute path"):
        plan_of(spec, plugin_registry)


# --- sizes, ids, debug -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, key",
    [
        ('kernel_heap = "4097B"\n', "occlum.kernel_heap"),
        ('kernel_stack = "1B"\n', "occlum.kernel_stack"),
        ('kernel_stack = "6K"\n', "occlum.kernel_stack"),
    ],
)
def test_sizes_sgx_sign_refuses_are_refused_at_load(extra, key, tmp_path, plugin_registry):
    with pytest.raises(SpecError, match=rf"{key}: .*multiple of 4K"):
        plan_of(example_spec("tflite", tmp_path, extra), plugin_registry)


@pytest.mark.parametrize(
    "field", ["kernel_space_stack_size", "kernel_space_heap_size", "user_space_size"]
)
def test_occlum_json_rule_unaligned_enclave_sizes(field):
    doc = _valid_occlum_json()
    doc["resource_limits"][field] = "4097B"
    with pytest.raises(rules.OcclumRuleError, match="multiple of 4KB") as info:
        rules.check_occlum_json(doc)
    assert info.value.path == f"resource_limits.{field}"


def test_kss_ids_without_kss_are_refused(tmp_path, plugin_registry):
    spec = example_spec("tflite", tmp_path, 'family_id = "0x1234"\n')
    with pytest.raises(SpecError, match=r"occlum.family_id: only with occlum.enable_kss"):
        plan_of(spec, plugin_registry)
    spec = example_spec("tflite", tmp_path / "b", 'ext_prod_id = "0x7"\nenable_kss = true\n')
    assert plan_of(spec, plugin_registry).libos_options.ext_prod_id == 7


def test_a_debug_server_when_allowed_warns(tmp_path, plugin_registry):
    spec = example_spec("tflite", tmp_path, "allow_debug_server = true\n")
    (tmp_path / "server-measurements.json").write_text(json.dumps({**SERVER, "debug": True}))
    with pytest.warns(DebugServerWarning, match="DEBUG secret server"):
        plan_of(spec, plugin_registry)


# --- the environment -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["LD_PRELOAD", "LD_AUDIT", "PYTHONPATH", "PYTHONSTARTUP", "GLIBC_TUNABLES", "OPENSSL_CONF"],
)
def test_host_may_not_set_loader_or_interpreter_variables(
    name, tmp_path, plugin_registry, standin_root
):
    doc = _valid_occlum_json()
    doc["env"]["untrusted"] = [name]
    with pytest.raises(rules.OcclumRuleError, match="decides what code"):
        rules.check_occlum_json(doc)
    plan = plan_of(example_spec("tflite", tmp_path), plugin_registry)
    plan.env.pop(name, None)
    plan.env_passthrough.append(name)
    with pytest.raises(OcclumConfigError, match=rf": service.framework: .*{name} decides"):
        render(plan, OcclumOptions(rootfs=RootFS(standin_root)))


# --- the command line ------------------------------------------------------------------------


def test_python_services_start_only_through_the_measured_launcher(
    tmp_path, plugin_registry, standin_root
):
    plan, config = _render(example_spec("tflite", tmp_path), plugin_registry, standin_root)
    doc = json.loads(config.occlum_json)
    assert doc["entry_points"] == [LAUNCHER]  # not the interpreter: no `python -c`
    assert LAUNCHER in _copied(config.bom_yaml, LAUNCHER)
    command = entrypoint(plan, config.entry_points, config.program)
    assert command[:4] == ("/bin/sh", "-c", command[2], "occlum-run")
    assert command[4:] == (LAUNCHER,)
    assert "$@" in command[2] and plan.service not in command[2]


def test_the_launcher_ignores_the_hosts_arguments(tmp_path, plugin_registry):
    """Run the launcher with this machine's Python: host arguments are dropped, and planned
    arguments with quotes, newlines and shell characters arrive exactly as planned. The
    module comes from PYTHONPATH, never from the working directory: Occlum starts processes in
    "/", where a hostfs mount could show host-written modules (``json`` here, and a module of
    the planned name), which `python -m` would import first."""
    plan = plan_of(example_spec("tflite", tmp_path), plugin_registry)
    planned = ["--config", "/x'y\"z", "a\nb", "$(id)", "; rm -rf /"]
    plan.argv = [plan.entrypoint, "-m", "probe_module"] + planned
    launcher = python_launcher(plan)
    assert launcher is not None and launcher.mode == 0o755
    lib, cwd = tmp_path / "lib", tmp_path / "root"
    lib.mkdir()
    (cwd / "json").mkdir(parents=True)
    script = tmp_path / "launch.py"
    script.write_bytes(launcher.data)
    (lib / "probe_module.py").write_text("import json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    host_code = "print('HOST CODE IN THE ENCLAVE')\nraise SystemExit(42)\n"
    (cwd / "probe_module.py").write_text(host_code)
    (cwd / "json" / "__init__.py").write_text(host_code)
    result = subprocess.run(
        [sys.executable, str(script), "-c", "print('host code')", "--evil"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(lib)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout) == planned
    assert launcher.data.startswith(f"#!{plan.entrypoint}\n".encode())


def test_hostfs_cannot_cover_a_python_scripts_directory(tmp_path, plugin_registry, standin_root):
    """A service run as ``INTERPRETER /SCRIPT``: the script's directory is first on sys.path,
    so a hostfs mount there is refused like one on PYTHONPATH."""

    def script(plan):
        plan.argv = [plan.entrypoint, "/opt/app/serve.py"]

    spec = example_spec("tflite", tmp_path, '[occlum.hostfs]\n"/opt/app" = "/srv/app"\n')
    with pytest.raises(OcclumConfigError, match=r"/opt/app"):
        _render(spec, plugin_registry, standin_root, script)


def test_interpreter_options_cannot_be_fixed_and_are_refused(
    tmp_path, plugin_registry, standin_root
):
    def options(plan):
        plan.argv = [plan.entrypoint, "-u", "-m", "enclave_build.model_server"]

    with pytest.raises(OcclumConfigError, match=r": service.framework: .*cannot be fixed"):
        _render(example_spec("tflite", tmp_path), plugin_registry, standin_root, options)


# --- frameworks Occlum cannot run ------------------------------------------------------------


def _owner_cert(path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "owner")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_secret_server_on_occlum_is_refused_naming_libos(tmp_path, plugin_registry):
    built = tmp_path / "face" / "out"
    built.mkdir(parents=True)
    (built / "measurements.json").write_text(
        json.dumps({**SERVER, "service": "face", "framework": "tflite"})
    )
    (built / "secrets-policy.toml").write_text(
        'measurements = ["measurements.json"]\n[[secrets]]\nname = "face-key"\n'
        'file = "../../keys/face-key.key"\nallow = ["face"]\n'
    )
    _owner_cert(tmp_path / "owner.crt")
    (tmp_path / "root.pem").write_text("placeholder root\n")
    (tmp_path / "collateral.json").write_text("{}\n")
    (tmp_path / "key.pem").write_bytes(sgx_key_pem())
    spec = tmp_path / "spec.toml"
    spec.write_text("""[service]
name = "secret-server"
framework = "secret-server"
libos = "occlum"

[secret-server]
port = 4433
policies = ["face/out"]
owners = ["owner.crt"]
root_ca = "root.pem"
collateral = "collateral.json"

[signing]
key = "key.pem"
""")
    from enclave_build.plugins.secret_server import SyntheticRootWarning

    with pytest.raises(OcclumConfigError) as info, pytest.warns(SyntheticRootWarning):
        plan_of(spec, plugin_registry)
    assert f"{spec}:4: service.libos: " in str(info.value)
    assert "/dev/attestation" in str(info.value) and 'libos = "gramine"' in str(info.value)


@pytest.mark.parametrize(
    "target",
    [
        "/tmp/.local",  # the user site with HOME=/tmp
        "/root/.local/lib",
        "/usr/lib/python3.11/dist-packages",
        "/usr/lib/python3.11/site-packages",
        "/usr/local/lib/python3.12/site-packages",  # any version
        "/usr/lib/python3/dist-packages/extra",  # inside one
        "/usr/lib64/python3.11/site-packages",
        "/usr/local/lib/python3.9",  # another version
        "/opt/enclave-build/python/newpkg",  # inside PYTHONPATH
    ],
)
def test_hostfs_on_pythons_import_path_is_refused(target, tmp_path, plugin_registry, standin_root):
    """Was: accepted; a host-written .pth there ran in the enclave before the launcher."""
    spec = example_spec("tflite", tmp_path, f'[occlum.hostfs]\n"{target}" = "/srv/data"\n')
    with pytest.raises(OcclumConfigError) as info:
        _render(spec, plugin_registry, standin_root)
    line = next(
        i for i, t in enumerate(spec.read_text().splitlines(), 1) if t.startswith(f'"{target}"')
    )
    assert f"spec.toml:{line}: occlum.hostfs.{target}: " in str(info.value)
    assert "on Python's import path" in str(info.value)


def test_a_python_service_runs_without_the_user_site(tmp_path, plugin_registry, standin_root):
    spec = example_spec("tflite", tmp_path)
    _, config = _render(spec, plugin_registry, standin_root)
    assert "PYTHONNOUSERSITE=1" in json.loads(config.occlum_json)["env"]["default"]
