"""Occlum 0.31 configuration rendered from a plan: goldens per builtin framework and one
refusal per Occlum parser rule the backend relies on (builder/occlum/rules.py).

Regenerate the goldens with ``UPDATE_GOLDEN=1``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path

import pytest
import yaml

from enclave_build.builder.build import make_plan
from enclave_build.builder.occlum import rules
from enclave_build.builder.occlum.bom import to_yaml
from enclave_build.builder.occlum.init_ra import image_key_text
from enclave_build.builder.occlum.launcher import LAUNCHER
from enclave_build.builder.occlum.render import KEYS_DIR, OcclumConfigError, OcclumOptions, render
from enclave_build.builder.occlum.spec_section import OcclumPlanOptions, plan_options
from enclave_build.builder.rootfs import RootFS
from enclave_build.builder.spec import SpecError, load_spec
from enclave_build.plugin import SERVER_CONFIG, SERVER_PYTHONPATH

from .conftest import sgx_key_pem, tflite_bytes

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "golden" / "occlum"
FRAMEWORKS = ("openvino", "tflite", "tfserving")
SERVER = {
    "service": "secrets",
    "framework": "secret-server",
    "libos": "gramine",
    "mr_enclave": "5e" * 32,
    "mr_signer": "a1" * 32,
    "isv_prod_id": 9,
    "isv_svn": 3,
    "debug": False,
    "image": {"ref": None, "digest": None},
}


def _models(root: Path) -> None:
    models = root / "models"
    (models / "half_plus_two" / "variables").mkdir(parents=True)
    (models / "half_plus_two" / "saved_model.pb").write_bytes(b"\x08\x01" + bytes(100))
    (models / "half_plus_two" / "variables" / "variables.index").write_bytes(b"idx")
    (models / "face_detection_short_range.tflite").write_bytes(tflite_bytes(bytes(200)))
    (models / "face_detection_ov").mkdir()
    (models / "face_detection_ov" / "face_detection.xml").write_text("<net name='face'/>\n")
    (models / "face_detection_ov" / "face_detection.bin").write_bytes(bytes(range(256)))
    keys = root / "keys"
    keys.mkdir()
    (keys / "demo-ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    (keys / "enclave-key.pem").write_bytes(sgx_key_pem())  # checked, never signed with
    (root.parent / "server-measurements.json").write_text(json.dumps(SERVER))


def example_spec(framework: str, root: Path, extra: str = "") -> Path:
    """examples/FRAMEWORK/spec.toml in a tmp copy, with libos switched to occlum."""
    if not (root / "examples" / "models").exists():
        _models(root / "examples")
    text = (REPO / "examples" / framework / "spec.toml").read_text()
    text = re.sub(r"(?m)^libos = .*\n", "", text)
    text = re.sub(r"(?m)^(framework = .*)$", r'\1\nlibos = "occlum"', text, count=1)
    text += '\n[occlum]\nserver_measurements = ["../../server-measurements.json"]\n' + extra
    directory = root / "examples" / framework
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "spec.toml").write_text(text)
    return directory / "spec.toml"


def plan_of(spec_path: Path, plugin_registry):
    spec = load_spec(
        spec_path, plugin_registry.framework_sections(), plugin_registry.libos_sections()
    )
    return make_plan(spec, plugin_registry)


def write_spec(root: Path, text: str) -> Path:
    """A spec in ROOT/examples/custom/ (so ../models and ../keys are the test's files)."""
    if not (root / "examples" / "models").exists():
        _models(root / "examples")
    (root / "examples" / "custom").mkdir(exist_ok=True)
    path = root / "examples" / "custom" / "spec.toml"
    path.write_text(text)
    return path


def check_golden(name: str, content: bytes) -> None:
    golden = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_bytes(content)
    assert content.decode() == golden.read_text(), f"{name} differs (UPDATE_GOLDEN=1 rewrites)"


def bom_view(bom: dict) -> dict:
    """The bom without our own server's code (its hashes change with every edit of
    model_server/; checked against the installed files instead)."""
    view = copy.deepcopy(bom)
    view["targets"] = [t for t in view["targets"] if not t["target"].startswith(SERVER_PYTHONPATH)]
    return view


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_golden_per_framework(framework, tmp_path, plugin_registry, standin_root):
    plan = plan_of(example_spec(framework, tmp_path), plugin_registry)
    config = render(plan, OcclumOptions(rootfs=RootFS(standin_root)))
    bom = yaml.safe_load(config.bom_yaml)
    rules.check_bom(bom)
    rules.check_occlum_json(json.loads(config.occlum_json))
    rules.check_init_ra_conf(json.loads(config.init_ra_conf))
    check_golden(f"{framework}.Occlum.json", config.occlum_json)
    check_golden(f"{framework}.init_ra_conf.json", config.init_ra_conf)
    header = config.bom_yaml.decode().splitlines()[0][2:]
    check_golden(f"{framework}.bom.yaml", to_yaml(bom_view(bom), header))
    assert yaml.safe_load(config.bom_yaml) == yaml.safe_load(to_yaml(bom, header))
    # Our server's code: each staged file's hash is the installed file's.
    for target in bom["targets"]:
        if target["target"].startswith(SERVER_PYTHONPATH):
            for entry in target["copy"][0]["files"]:
                dest = f"{target['target']}/{entry['name']}"
                item = next(f for f in plan.files if f.dest == dest)
                data = item.data if item.data is not None else item.source.read_bytes()
                assert entry["hash"] == hashlib.sha256(data).hexdigest().upper()
    # The model is in the (encrypted) image, and its key is fetched by init.
    assert config.image_key is not None
    assert config.kms_keys[0].secret == "image_key"
    # Python services: the measured launcher is the only program `occlum run` may start.
    expected = LAUNCHER if plan.python is not None else plan.entrypoint
    assert config.entry_points == (expected,) and config.program == expected


def test_golden_openvino_ovms_mode(tmp_path, plugin_registry, standin_root):
    """openvino's other mode, the OVMS binary: a binary service (no launcher; `occlum run`
    starts OVMS itself, with the host's arguments)."""
    spec = example_spec("openvino", tmp_path)
    spec.write_text(spec.read_text().replace('mode = "python"', 'mode = "ovms"', 1))
    plan = plan_of(spec, plugin_registry)
    assert plan.python is None
    config = render(plan, OcclumOptions(rootfs=RootFS(standin_root)))
    rules.check_occlum_json(json.loads(config.occlum_json))
    rules.check_init_ra_conf(json.loads(config.init_ra_conf))
    rules.check_bom(yaml.safe_load(config.bom_yaml))
    check_golden("openvino-ovms.Occlum.json", config.occlum_json)
    check_golden("openvino-ovms.init_ra_conf.json", config.init_ra_conf)
    check_golden("openvino-ovms.bom.yaml", config.bom_yaml)
    assert config.entry_points == (plan.entrypoint,) and config.program == plan.entrypoint


def test_bom_copies_what_the_plan_lists(tmp_path, plugin_registry, standin_root):
    plan = plan_of(example_spec("tfserving", tmp_path), plugin_registry)
    bom = yaml.safe_load(render(plan, OcclumOptions(rootfs=RootFS(standin_root))).bom_yaml)
    copied = {}
    for t in bom["targets"]:
        for src in t.get("copy", []):
            for f in src["files"]:
                copied[f"{t['target'].rstrip('/')}/{f.get('rename', f['name'])}"] = (src["from"], f)
    model = copied["/models/half_plus_two/1/saved_model.pb"]
    assert model[0] == "/eb/stage/models/half_plus_two/1"
    assert model[1]["hash"] == hashlib.sha256(b"\x08\x01" + bytes(100)).hexdigest().upper()
    assert copied["/usr/bin/tensorflow_model_server"][0] == "/eb/rootfs/usr/bin"
    assert all(f["autodep"] is False for _, f in copied.values())
    assert not any(p.endswith("/libc.so.6") for p in copied), "glibc must be Occlum's"
    mkdirs = next(t for t in bom["targets"] if t["target"] == "/")["mkdirs"]
    assert KEYS_DIR.lstrip("/") in mkdirs and "tmp" in mkdirs


def test_clear_text_service_needs_no_init_ra(tmp_path, plugin_registry, standin_root):
    spec = write_spec(
        tmp_path,
        """[service]
name = "lite"
framework = "tflite"
libos = "occlum"

[[models]]
name = "face"
path = "../models/face_detection_short_range.tflite"
encrypt = false

[signing]
key = "../keys/enclave-key.pem"

[occlum.hostfs]
"/host/data" = "/var/lib/data"
""",
    )
    config = render(plan_of(spec, plugin_registry), OcclumOptions(rootfs=RootFS(standin_root)))
    assert config.init_ra_conf is None and config.image_key is None and config.kms_keys == ()
    mounts = json.loads(config.occlum_json)["mount"]
    assert {"target": "/host/data", "type": "hostfs", "source": "/var/lib/data"} in mounts
    assert not any(m["target"] == KEYS_DIR for m in mounts)


def test_occlum_needs_no_secret_server_ca(tmp_path, plugin_registry, standin_root):
    """Occlum's init verifies the secret server by its quote ([occlum] server_measurements),
    never against a CA: [secrets] ca is not required there (it still is for Gramine)."""
    spec = example_spec("tflite", tmp_path)
    spec.write_text(re.sub(r"(?m)^ca = .*\n", "", spec.read_text()))
    plan = plan_of(spec, plugin_registry)
    assert plan.secrets.ca_cert is None
    config = render(plan, OcclumOptions(rootfs=RootFS(standin_root)))
    assert json.loads(config.init_ra_conf)["ra_config"]["sgx_mrs"][0]["mr_enclave"] == "5e" * 32
    server = next(f for f in plan.image_files() if f.dest == SERVER_CONFIG)
    keys = json.loads(server.data)["keys"]
    assert keys["source"] == "files" and "ca" not in keys
    spec.write_text(
        spec.read_text().replace('libos = "occlum"', 'libos = "gramine"').split("\n[occlum]")[0]
    )
    with pytest.raises(SpecError, match=r"secrets\.ca: required with secrets\.server"):
        plan_of(spec, plugin_registry)


def test_no_hostfs_unless_asked(tmp_path, plugin_registry, standin_root):
    plan = plan_of(example_spec("tflite", tmp_path), plugin_registry)
    doc = json.loads(render(plan, OcclumOptions(rootfs=RootFS(standin_root))).occlum_json)
    assert not any(m["type"] == "hostfs" for m in doc["mount"])


def test_edmm_sizes(tmp_path, plugin_registry, standin_root):
    spec = example_spec(
        "tflite",
        tmp_path,
        'kernel_heap = "16M"\nkernel_heap_max = "64MB"\n'
        'user_space_init = "128M"\ninit_threads = 8\n',
    )
    text = spec.read_text().replace("max_threads = 32", "max_threads = 32\nedmm = true")
    spec.write_text(text)
    rl = json.loads(
        render(
            plan_of(spec, plugin_registry), OcclumOptions(rootfs=RootFS(standin_root))
        ).occlum_json
    )
    assert rl["feature"]["enable_edmm"] is True
    rl = rl["resource_limits"]
    assert rl == {
        "max_num_of_threads": 32,
        "kernel_space_heap_size": "16MB",
        "kernel_space_stack_size": "1MB",
        "kernel_space_heap_max_size": "64MB",
        "user_space_size": "128MB",
        "user_space_max_size": f"{2048 - 64 - 32}MB",
        "init_num_of_threads": 8,
    }


def test_image_key_text():
    assert image_key_text(bytes(range(16))) == (
        b"00-01-02-03-04-05-06-07-08-09-0a-0b-0c-0d-0e-0f\n"
    )
    with pytest.raises(ValueError):
        image_key_text(b"short")


# --- refusals that name the spec key ---------------------------------------------------------


def _render_error(spec: Path, plugin_registry, standin_root, mutate=None) -> str:
    plan = plan_of(spec, plugin_registry)
    if mutate:
        mutate(plan)
    with pytest.raises(OcclumConfigError) as info:
        render(plan, OcclumOptions(rootfs=RootFS(standin_root)))
    return str(info.value)


def _line(spec: Path, needle: str) -> int:
    return next(i for i, line in enumerate(spec.read_text().splitlines(), 1) if needle in line)


def test_enclave_too_small_names_enclave_size(tmp_path, plugin_registry, standin_root):
    spec = example_spec("tflite", tmp_path)
    spec.write_text(spec.read_text().replace('size = "2G"', 'size = "64M"'))
    message = _render_error(spec, plugin_registry, standin_root)
    assert f"spec.toml:{_line(spec, 'size = ')}: enclave.size:" in message
    assert "user space" in message


def test_zero_threads_names_max_threads(tmp_path, plugin_registry, standin_root):
    spec = example_spec("tflite", tmp_path)

    def zero(plan):
        plan.enclave.max_threads = 0

    message = _render_error(spec, plugin_registry, standin_root, zero)
    assert f"spec.toml:{_line(spec, 'max_threads')}: enclave.max_threads:" in message


def _with_occlum(plan, **changes):
    base = plan_options(plan)
    plan.libos_options = OcclumPlanOptions(**{**base.__dict__, **changes})


@pytest.mark.parametrize(
    "changes, key, needle",
    [
        ({"hostfs": (("/proc", "/srv"),)}, "occlum.hostfs./proc", "mounted by Occlum itself"),
        ({"hostfs": (("/tmp", "/srv"),)}, "occlum.hostfs./tmp", "mounted twice"),
        ({"hostfs": (("/data", ""),)}, "occlum.hostfs./data", "needs a source"),
        ({"io_uring": 17}, "occlum.io_uring", "out of range"),
        ({"amx": 3}, "occlum.amx", "out of range"),
        ({"kernel_stack": 0}, "occlum.kernel_stack", "is zero"),
        ({"server_identities": ()}, "occlum.server_measurements", "mutual RA-TLS"),
    ],
)
def test_plan_values_occlum_refuses_name_their_key(
    changes, key, needle, tmp_path, plugin_registry, standin_root
):
    spec = example_spec("tflite", tmp_path)
    message = _render_error(
        spec, plugin_registry, standin_root, lambda p: _with_occlum(p, **changes)
    )
    assert f": {key}:" in message and needle in message
    assert message.startswith(
        str(spec.relative_to(Path.cwd())) if spec.is_relative_to(Path.cwd()) else str(spec)
    )


def test_env_measured_and_untrusted_names_framework(tmp_path, plugin_registry, standin_root):
    spec = example_spec("tflite", tmp_path)

    def clash(plan):
        plan.env["ENCLAVE_BUILD_SIMULATED_QUOTER"] = "1"

    message = _render_error(spec, plugin_registry, standin_root, clash)
    assert ": service.framework:" in message and "measured and taken from the host" in message


def test_key_named_image_key_refused(tmp_path, plugin_registry, standin_root):
    spec = example_spec("tflite", tmp_path)
    spec.write_text(spec.read_text().replace("encrypt = true", 'encrypt = true\nkey = "image_key"'))
    message = _render_error(spec, plugin_registry, standin_root)
    assert "image_key" in message and "models" in message


@pytest.mark.parametrize(
    "extra, key, needle",
    [
        ('kernel_heap = "32Q"\n', "occlum.kernel_heap", "not a size"),
        ('kernel_heap = "0M"\n', "occlum.kernel_heap", "not zero"),
        ('kernel_heap_max = "64M"\n', "occlum.kernel_heap_max", "only with enclave.edmm"),
        ("init_threads = 4\n", "occlum.init_threads", "only with enclave.edmm"),
        ('family_id = "12"\n', "occlum.family_id", "hex digits"),
        ("io_uring = 17\n", "occlum.io_uring", "out of range"),
        ('[occlum.hostfs]\n"data" = "/srv"\n', "occlum.hostfs.data", "absolute path"),
        ('[occlum.hostfs]\n"/a/../b" = "/srv"\n', "occlum.hostfs./a/../b", "absolute path"),
        ('[occlum.hostfs]\n"/data" = ""\n', "occlum.hostfs./data", "needs its source"),
    ],
)
def test_spec_refusals_name_their_key(extra, key, needle, tmp_path, plugin_registry):
    spec = example_spec("tflite", tmp_path, extra)
    with pytest.raises(SpecError) as info:
        plan_of(spec, plugin_registry)
    assert f": {key}: " in str(info.value) and needle in str(info.value)
    assert re.search(r"spec\.toml:\d+: ", str(info.value))


def test_debug_server_refused_unless_allowed(tmp_path, plugin_registry):
    spec = example_spec("tflite", tmp_path)
    (tmp_path / "server-measurements.json").write_text(json.dumps({**SERVER, "debug": True}))
    with pytest.raises(SpecError, match=r"occlum.server_measurements\[0\]: .*DEBUG"):
        plan_of(spec, plugin_registry)
    spec.write_text(spec.read_text() + "allow_debug_server = true\n")
    with pytest.warns(UserWarning, match="DEBUG secret server"):
        assert plan_of(spec, plugin_registry).libos_options.server_identities[0].debug is True


def test_occlum_section_needs_occlum_libos(tmp_path, plugin_registry):
    spec = example_spec("tflite", tmp_path)
    spec.write_text(spec.read_text().replace('libos = "occlum"', 'libos = "gramine"'))
    with pytest.raises(SpecError, match=r"spec\.toml:\d+: occlum: .*only to service.libos"):
        plan_of(spec, plugin_registry)


# --- every Occlum.json rule, on a valid document ---------------------------------------------


def _valid_occlum_json() -> dict:
    return {
        "resource_limits": {
            "max_num_of_threads": 32,
            "kernel_space_heap_size": "32MB",
            "kernel_space_stack_size": "1MB",
            "user_space_size": "300MB",
        },
        "process": {
            "default_stack_size": "4MB",
            "default_heap_size": "32MB",
            "default_mmap_size": "100MB",
        },
        "entry_points": ["/bin"],
        "env": {"default": ["OCCLUM=yes"], "untrusted": ["EXAMPLE"]},
        "metadata": {
            "product_id": 0,
            "version_number": 0,
            "debuggable": False,
            "enable_kss": False,
            "family_id": {"high": "0x0", "low": "0x0"},
            "ext_prod_id": {"high": "0x0", "low": "0x0"},
        },
        "feature": {
            "amx": 0,
            "pkru": 0,
            "io_uring": 0,
            "enable_edmm": False,
            "enable_posix_shm": False,
        },
        "mount": [
            {
                "target": "/",
                "type": "unionfs",
                "options": {
                    "layers": [
                        {
                            "target": "/",
                            "type": "sefs",
                            "source": "./build/mount/__ROOT",
                            "options": {"MAC": ""},
                        },
                        {"target": "/", "type": "sefs", "source": "./run/mount/__ROOT"},
                    ]
                },
            },
            {"target": "/host", "type": "hostfs", "source": "."},
        ],
    }


def _set(doc: dict, path: str, value) -> None:
    parts = re.findall(r"[^.\[\]]+|\[\d+\]", path)
    node = doc
    for part in parts[:-1]:
        node = node[int(part[1:-1])] if part.startswith("[") else node[part]
    last = parts[-1]
    if last.startswith("["):
        node[int(last[1:-1])] = value
    elif value is _DELETE:
        del node[last]
    else:
        node[last] = value


_DELETE = object()
R = "resource_limits"
LAYERS = "mount[0].options.layers"

OCCLUM_JSON_RULES = [
    # (JSON path to change, new value, path reported, words in the message)
    ("extra", 1, "extra", "unknown field"),
    ("process", _DELETE, "process", "missing field"),
    (R, [], R, "expected an object"),
    ("mount", {}, "mount", "expected an array of mounts"),
    (f"{R}.max_num_of_threads", 0, f"{R}.max_num_of_threads", "out of range"),
    (f"{R}.max_num_of_threads", 1 << 32, f"{R}.max_num_of_threads", "out of range"),
    (f"{R}.max_num_of_threads", "32", f"{R}.max_num_of_threads", "expected an integer"),
    (f"{R}.init_num_of_threads", 64, f"{R}.init_num_of_threads", "exceeds max_num_of_threads"),
    (f"{R}.kernel_space_heap_size", "32M", f"{R}.kernel_space_heap_size", "No unit"),
    (f"{R}.kernel_space_heap_size", "32mb", f"{R}.kernel_space_heap_size", "No unit"),
    (f"{R}.kernel_space_stack_size", "MB", f"{R}.kernel_space_stack_size", "No number"),
    (f"{R}.kernel_space_stack_size", "-1MB", f"{R}.kernel_space_stack_size", "No number"),
    (f"{R}.user_space_size", "0MB", f"{R}.user_space_size", "zero"),
    (
        f"{R}.kernel_space_stack_size",
        "1025KB",
        f"{R}.kernel_space_stack_size",
        "not a multiple of 4KB",
    ),
    (f"{R}.user_space_size", "300001KB", f"{R}.user_space_size", "not a multiple of 4KB"),
    (f"{R}.user_space_size", "99999999999TB", f"{R}.user_space_size", "64 bits"),
    (
        f"{R}.kernel_space_heap_max_size",
        "16MB",
        f"{R}.kernel_space_heap_size",
        "exceeds kernel_space_heap_max_size",
    ),
    (f"{R}.user_space_max_size", "100MB", f"{R}.user_space_size", "exceeds user_space_max_size"),
    (f"{R}.marshal_buffer_size", "1MB", f"{R}.marshal_buffer_size", "unknown field"),
    ("process.default_stack_size", "4 M", "process.default_stack_size", "No unit"),
    ("process.stack", "4MB", "process.stack", "unknown field"),
    ("entry_points", [], "entry_points", "empty"),
    ("entry_points", "/bin", "entry_points", "expected an array of strings"),
    ("entry_points", ["bin"], "entry_points[0]", "not an absolute path"),
    ("entry_points", ["/bin/../root"], "entry_points[0]", 'contains ".."'),
    ("env.default", ["OCCLUM"], "env.default[0]", "not NAME=VALUE"),
    ("env.default", ["1X=a"], "env.default[0]", "not an environment variable name"),
    ("env.default", ["A=1", "A=2"], "env.default[1]", "set twice"),
    ("env.default", ["A=\0"], "env.default[0]", "NUL"),
    ("env.untrusted", ["OCCLUM"], "env.untrusted[0]", "also measured"),
    ("env.untrusted", ["A=B"], "env.untrusted[0]", "not an environment variable name"),
    ("env.untrusted", ["LD_PRELOAD"], "env.untrusted[0]", "decides what code"),
    ("env.extra", [], "env.extra", "unknown field"),
    ("env.untrusted", _DELETE, "env.untrusted", "missing field"),
    ("metadata.product_id", 65536, "metadata.product_id", "16-bit"),
    ("metadata.version_number", -1, "metadata.version_number", "out of range"),
    ("metadata.debuggable", "false", "metadata.debuggable", "true or false"),
    ("metadata.family_id", {"high": "0x0"}, "metadata.family_id.low", "missing field"),
    (
        "metadata.ext_prod_id.low",
        "0x12345678123456789",
        "metadata.ext_prod_id.low",
        "64-bit hex id",
    ),
    ("metadata.family_id.high", "zz", "metadata.family_id.high", "64-bit hex id"),
    ("feature.amx", 3, "feature.amx", "out of range"),
    ("feature.pkru", -1, "feature.pkru", "out of range"),
    ("feature.io_uring", 17, "feature.io_uring", "out of range"),
    ("feature.enable_edmm", 1, "feature.enable_edmm", "true or false"),
    ("feature.sgx2", True, "feature.sgx2", "unknown field"),
    ("mount[1].type", "nfs", "mount[1].type", "not a file system type"),
    ("mount[1].target", "host", "mount[1].target", "not absolute"),
    ("mount[1].source", _DELETE, "mount[1].source", "needs a source"),
    ("mount[1].options", {"index": 1}, "mount[1].options.index", "unknown field"),
    ("mount[1].options", {"readonly": True}, "mount[1].options.readonly", "unknown field"),
    ("mount[1].extra", 1, "mount[1].extra", "unknown field"),
    ("mount[1].target", "/proc", "mount[1].target", "mounted by Occlum itself"),
    ("mount[1].target", "/dev", "mount[1].target", "mounted by Occlum itself"),
    ("mount[1]", {"target": "/", "type": "ramfs"}, "mount[1].target", "mounted twice"),
    ("mount[1].options", {"layers": []}, "mount[1].options.layers", "unionfs mount only"),
    (
        "mount[1]",
        {
            "target": "/c",
            "type": "sefs",
            "source": "./c",
            "options": {"temporary": True, "MAC": ""},
        },
        "mount[1].options.temporary",
        "cannot be temporary",
    ),
    ("mount[1]", {"target": "/c", "type": "sefs"}, "mount[1].source", "needs a source"),
    (
        "mount[1]",
        {"target": "/c", "type": "sefs", "source": "./c", "options": {"cache_size": "100KB"}},
        "mount[1].options.cache_size",
        "at least",
    ),
    (
        "mount[1]",
        {"target": "/c", "type": "sefs", "source": "./c", "options": {"cache_size": "196609B"}},
        "mount[1].options.cache_size",
        "multiple of",
    ),
    (
        "mount[1]",
        {"target": "/c", "type": "sefs", "source": "./c", "options": {"cache_size": "64MB"}},
        "mount[1].options.cache_size",
        "kernel heap maximum",
    ),
    ("mount[1]", {"target": "/e", "type": "ext2"}, "mount[1].options.disk_size", "needs disk_size"),
    (
        "mount[1]",
        {"target": "/e", "type": "ext2", "options": {"disk_size": "4GB"}},
        "mount[1].options.disk_size",
        "minimum 5GB",
    ),
    ("mount[0].type", "sefs", "mount[0].source", "needs a source"),
    ("mount[0].target", "/root", "mount", "no root unionfs"),
    (LAYERS, [{"target": "/", "type": "sefs", "source": "./a"}], LAYERS, "two sefs layers"),
    (f"{LAYERS}[1].type", "hostfs", f"{LAYERS}[1].type", "must be sefs"),
    (f"{LAYERS}[0].options", {}, LAYERS, "no image sefs layer"),
    (f"{LAYERS}[1].options", {"MAC": ""}, LAYERS, "no container sefs layer"),
    (f"{LAYERS}[0].options.MAC", 0, f"{LAYERS}[0].options.MAC", "expected a string"),
]


def test_valid_occlum_json_passes():
    rules.check_occlum_json(_valid_occlum_json())
    doc = _valid_occlum_json()
    doc["resource_limits"].update(
        init_num_of_threads=2, kernel_space_heap_max_size="40MB", user_space_max_size="600MB"
    )
    doc["mount"].append({"target": "/e", "type": "ext2", "options": {"disk_size": "10GB"}})
    rules.check_occlum_json(doc)


def _refused(check, doc: dict, path, value, reported: str, words: str) -> rules.OcclumRuleError:
    """*doc* with *value* at *path* is refused by *check*, at *reported*, saying *words*."""
    _set(doc, path, value)
    with pytest.raises(rules.OcclumRuleError) as info:
        check(doc)
    assert info.value.path == reported, str(info.value)
    assert words in info.value.reason
    return info.value


@pytest.mark.parametrize(
    "path, value, reported, words",
    OCCLUM_JSON_RULES,
    ids=[f"{r[0]}={r[1]!r}"[:60] for r in OCCLUM_JSON_RULES],
)
def test_occlum_json_rule(path, value, reported, words):
    refusal = _refused(rules.check_occlum_json, _valid_occlum_json(), path, value, reported, words)
    assert refusal.document == "Occlum.json"


def test_memory_size_parser_matches_occlum():
    assert rules.parse_memory_size(" 32MB ") == 32 << 20
    assert rules.parse_memory_size("32 MB") == 32 << 20
    assert rules.parse_memory_size("4096B") == 4096
    assert rules.parse_memory_size("1TB") == 1 << 40
    for bad in ("32M", "32", "1.5GB", "0x10MB", "MB"):
        with pytest.raises(ValueError):
            rules.parse_memory_size(bad)
    assert [rules.format_size(n) for n in (32 << 20, 1536, 3 << 30, 0)] == [
        "32MB",
        "1536B",
        "3GB",
        "0B",
    ]


# --- init_ra_conf.json rules -----------------------------------------------------------------


def _valid_init_ra() -> dict:
    return {
        "kms_server": "localhost:50051",
        "kms_keys": [{"key": "demo_key", "path": "/etc/demo_key"}],
        "ra_config": {
            "verify_mr_enclave": "on",
            "verify_mr_signer": "on",
            "verify_isv_prod_id": "on",
            "verify_isv_svn": "on",
            "verify_config_svn": "off",
            "verify_enclave_debuggable": "on",
            "sgx_mrs": [
                {
                    "mr_enclave": "ab" * 32,
                    "mr_signer": "cd" * 32,
                    "isv_prod_id": 0,
                    "isv_svn": 0,
                    "config_svn": 0,
                    "debuggable": False,
                }
            ],
        },
    }


MRS = "ra_config.sgx_mrs"
INIT_RA_RULES = [
    ("extra", 1, "extra", "unknown field"),
    ("ra_config", _DELETE, "ra_config", "missing field"),
    ("kms_server", "localhost", "kms_server", "not HOST:PORT"),
    ("kms_server", "h:0", "kms_server", "not HOST:PORT"),
    ("kms_keys", {}, "kms_keys", "expected an array"),
    ("kms_keys[0]", {"key": "a"}, "kms_keys[0].path", "missing field"),
    (
        "kms_keys[0]",
        {"key": "a", "path": "/a", "service": "x"},
        "kms_keys[0].service",
        "unknown field",
    ),
    ("kms_keys[0].key", "", "kms_keys[0].key", "empty"),
    ("kms_keys[0].key", "a\0b", "kms_keys[0].key", "NUL"),
    ("kms_keys[0].key", "image_key", "kms_keys[0].key", "image key"),
    (
        "kms_keys",
        [{"key": "a", "path": "/a"}, {"key": "a", "path": "/b"}],
        "kms_keys[1].key",
        "fetched twice",
    ),
    (
        "kms_keys",
        [{"key": "a", "path": "/a"}, {"key": "b", "path": "/a"}],
        "kms_keys[1].path",
        "written twice",
    ),
    ("kms_keys[0].path", "etc/key", "kms_keys[0].path", "not an absolute path"),
    ("kms_keys[0].path", "/etc/", "kms_keys[0].path", "directory"),
    ("ra_config.verify_mr_signer", "yes", "ra_config.verify_mr_signer", "neither"),
    ("ra_config.verify_mr_signer", True, "ra_config.verify_mr_signer", "expected a string"),
    (MRS, [], MRS, "accepts no server"),
    (MRS, {}, MRS, "expected an array"),
    (MRS, [_valid_init_ra()["ra_config"]["sgx_mrs"][0]] * 17, MRS, "only the first 16"),
    (f"{MRS}[0].mr_enclave", "AB" * 32, f"{MRS}[0].mr_enclave", "64 lower-case hex"),
    (f"{MRS}[0].mr_signer", "", f"{MRS}[0].mr_signer", "64 lower-case hex"),
    (f"{MRS}[0].isv_svn", 65536, f"{MRS}[0].isv_svn", "16-bit"),
    (f"{MRS}[0].debuggable", "no", f"{MRS}[0].debuggable", "true or false"),
    (f"{MRS}[0].extra", 1, f"{MRS}[0].extra", "unknown field"),
]


@pytest.mark.parametrize(
    "path, value, reported, words",
    INIT_RA_RULES,
    ids=[f"{r[0]}={r[1]!r}"[:60] for r in INIT_RA_RULES],
)
def test_init_ra_rule(path, value, reported, words):
    rules.check_init_ra_conf(_valid_init_ra())
    _refused(rules.check_init_ra_conf, _valid_init_ra(), path, value, reported, words)


def test_mr_enclave_may_be_blank_when_not_verified():
    doc = _valid_init_ra()
    doc["ra_config"]["verify_mr_enclave"] = "off"
    doc["ra_config"]["sgx_mrs"][0]["mr_enclave"] = ""
    rules.check_init_ra_conf(doc)


# --- copy_bom rules --------------------------------------------------------------------------


def _valid_bom() -> dict:
    return {
        "targets": [
            {"target": "/", "mkdirs": ["tmp"]},
            {
                "target": "/bin",
                "copy": [
                    {
                        "from": "/eb/stage/bin",
                        "files": [{"name": "app", "hash": "A" * 64, "autodep": False}, "other"],
                    }
                ],
            },
        ]
    }


BOM_RULES = [
    ("extra", 1, "extra", "unknown field"),
    ("targets", {"target": "/"}, "targets", "expected an array"),
    ("targets[0].mkdirs", ["/abs"], "targets[0].mkdirs[0]", "is absolute"),
    ("targets[0].mkdirs", ["a\nb"], "targets[0].mkdirs[0]", "control characters"),
    ("targets[0].mkdirs", ["$HOME/x"], "targets[0].mkdirs[0]", "environment variable"),
    ("targets[0].target", "bin", "targets[0].target", "not absolute"),
    ("targets[0].extra", [], "targets[0].extra", "unknown field"),
    ("targets[1].copy[0]", {}, "targets[1].copy[0]", "cannot be empty"),
    ("targets[1].copy[0].from", "/eb/${X}", "targets[1].copy[0].from", "environment variable"),
    (
        "targets[1].copy[0].files[0].hash",
        "a" * 64,
        "targets[1].copy[0].files[0].hash",
        "upper-case",
    ),
    (
        "targets[1].copy[0].files[0].name",
        "/etc/shadow",
        "targets[1].copy[0].files[0].name",
        "is absolute",
    ),
    ("targets[1].copy[0].files[1]", "/etc/shadow", "targets[1].copy[0].files[1]", "is absolute"),
    (
        "targets[1].copy[0].files[0].rename",
        "a/b",
        "targets[1].copy[0].files[0].rename",
        "not a file name",
    ),
    (
        "targets[1].copy[0].files[0].autodep",
        "no",
        "targets[1].copy[0].files[0].autodep",
        "true or false",
    ),
    ("targets[1].copy[0].files[0].mode", 420, "targets[1].copy[0].files[0].mode", "unknown field"),
    (
        "targets[0].createlinks",
        [{"src": "a"}],
        "targets[0].createlinks[0].linkname",
        "missing field",
    ),
]


@pytest.mark.parametrize(
    "path, value, reported, words", BOM_RULES, ids=[f"{r[0]}={r[1]!r}"[:60] for r in BOM_RULES]
)
def test_bom_rule(path, value, reported, words):
    rules.check_bom(_valid_bom())
    _refused(rules.check_bom, _valid_bom(), path, value, reported, words)


def test_rule_errors_map_to_spec_keys(tmp_path, plugin_registry, standin_root):
    """A rule broken by a rendered value names the spec key and its line."""
    spec = example_spec("tflite", tmp_path, '[occlum.hostfs]\n"/dev" = "/srv"\n')
    message = _render_error(spec, plugin_registry, standin_root)
    assert f"spec.toml:{_line(spec, '/dev')}: occlum.hostfs./dev: Occlum.json mount[" in message
