"""Bad specs and the exact error each must produce (used by test_spec_errors.py).

Each case is (id, spec text, expected stderr lines). The spec is written as spec.toml in a
directory that also holds model.tflite and key.pem; {dir} in expected lines is that directory.
"""

from enclave_build.builder.plugins import PluginRegistry

#: the installed frameworks as errors list them: the builtins, plus any third-party plugin
#: installed next to enclave-build (README installs the onnxruntime example's into .venv)
FRAMEWORKS = ", ".join(
    sorted({"openvino", "secret-server", "tflite", "tfserving"} | set(PluginRegistry().frameworks))
)

GOOD = """[service]
name = "svc"
framework = "tflite"

[[models]]
name = "m"
path = "model.tflite"
encrypt = false

[enclave]
size = "2G"
max_threads = 8

[signing]
key = "key.pem"
"""


def replace(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new)


CASES = [
    (
        "toml-syntax",
        replace('name = "svc"', 'name = "svc'),
        ["spec.toml:2: invalid TOML: Illegal character '\\n' (at line 2, column 12)"],
    ),
    (
        "unknown-section-typo",
        GOOD + '\n[enclaev]\nsize = "1G"\n',
        [
            "spec.toml:17: enclaev: unknown section; did you mean 'enclave'? allowed: service, models, "
            f"enclave, image, signing, secrets, tls, limits, build, deploy, provenance, occlum, {FRAMEWORKS}"
        ],
    ),
    (
        "unknown-key-typo",
        replace("max_threads = 8", "max_thread = 8"),
        [
            "spec.toml:12: enclave.max_thread: unknown key; did you mean 'max_threads'? allowed: size, "
            "max_threads, edmm, debug, isv_prod_id, isv_svn, log_level, trim"
        ],
    ),
    (
        "unknown-key-no-suggestion",
        replace("max_threads = 8", "max_threads = 8\nturbo = true"),
        [
            "spec.toml:13: enclave.turbo: unknown key; allowed: size, max_threads, edmm, debug, "
            "isv_prod_id, isv_svn, log_level, trim"
        ],
    ),
    (
        "log-level-not-a-choice",
        replace("max_threads = 8", 'max_threads = 8\nlog_level = "warn"'),
        [
            "spec.toml:13: enclave.log_level: 'warn' is not allowed; did you mean 'warning'? allowed: "
            "none, error, warning, debug, trace, all"
        ],
    ),
    (
        "size-not-power-of-two",
        replace('size = "2G"', 'size = "3G"'),
        [
            "spec.toml:11: enclave.size: '3G' is not a power of two; allowed: a power of two with a K, "
            'M or G suffix, e.g. "512M" or "4G"'
        ],
    ),
    (
        "size-not-a-size",
        replace('size = "2G"', 'size = "lots"'),
        [
            "spec.toml:11: enclave.size: 'lots' is not a size; allowed: a power of two with a K, M or G "
            'suffix, e.g. "512M" or "4G"'
        ],
    ),
    (
        "size-wrong-type",
        replace('size = "2G"', "size = 2147483648"),
        [
            'spec.toml:11: enclave.size: expected a size string such as "512M" or "4G", got integer '
            "2147483648"
        ],
    ),
    (
        "threads-wrong-type",
        replace("max_threads = 8", 'max_threads = "8"'),
        ["spec.toml:12: enclave.max_threads: expected an integer, got string '8'"],
    ),
    (
        "threads-too-few",
        replace("max_threads = 8", "max_threads = 2"),
        ["spec.toml:12: enclave.max_threads: 2 is out of range; allowed: 4 to 4096"],
    ),
    (
        "debug-not-bool",
        replace("max_threads = 8", 'max_threads = 8\ndebug = "yes"'),
        ["spec.toml:13: enclave.debug: expected a boolean (true or false), got string 'yes'"],
    ),
    (
        "prod-id-range",
        replace("max_threads = 8", "max_threads = 8\nisv_prod_id = 70000"),
        ["spec.toml:13: enclave.isv_prod_id: 70000 is out of range; allowed: 0 to 65535"],
    ),
    (
        "svn-negative",
        replace("max_threads = 8", "max_threads = 8\nisv_svn = -1"),
        ["spec.toml:13: enclave.isv_svn: -1 is out of range; allowed: 0 to 65535"],
    ),
    (
        "missing-service-section",
        GOOD.replace('[service]\nname = "svc"\nframework = "tflite"\n', ""),
        ["spec.toml: service: required section [service] is missing (what is served and how)"],
    ),
    (
        "missing-service-name",
        replace('name = "svc"\n', ""),
        [
            "spec.toml:1: service.name: required key is missing (the service's name, used for image "
            "and key names)"
        ],
    ),
    (
        "bad-service-name",
        replace('name = "svc"', 'name = "My_Service"'),
        [
            "spec.toml:2: service.name: 'My_Service' is not allowed; allowed: lower-case letters, "
            "digits and '-', at most 63 characters (a DNS label)"
        ],
    ),
    (
        "unknown-framework-typo",
        replace('framework = "tflite"', 'framework = "tfservin"'),
        [
            "spec.toml:3: service.framework: 'tfservin' is not an installed framework; did you mean "
            f"'tfserving'? allowed: {FRAMEWORKS} (see `enclave-build plugins`)"
        ],
    ),
    (
        "unknown-libos",
        replace('framework = "tflite"', 'framework = "tflite"\nlibos = "gramin"'),
        [
            "spec.toml:4: service.libos: 'gramin' is not an installed libOS backend; did you mean "
            "'gramine'? allowed: gramine, occlum"
        ],
    ),
    (
        "model-file-missing",
        replace('path = "model.tflite"', 'path = "missing.tflite"'),
        [
            "spec.toml:7: models[0].path: file not found: {dir}/missing.tflite (relative paths are "
            "resolved against the spec's directory)"
        ],
    ),
    (
        "model-missing-path",
        replace('path = "model.tflite"\n', ""),
        [
            "spec.toml:5: models[0].path: required key is missing (a model file or directory on the "
            "build machine)"
        ],
    ),
    (
        "models-not-array",
        replace("[[models]]", "[models]"),
        ["spec.toml:5: models: expected [[models]] entries (an array of tables), got a table"],
    ),
    (
        "duplicate-model",
        replace(
            "encrypt = false\n",
            'encrypt = false\n\n[[models]]\nname = "m"\npath = "model.tflite"\nencrypt = false\n',
        ),
        ["spec.toml:11: models[1].name: duplicate model name 'm' (also models[0])"],
    ),
    (
        "signing-key-missing-file",
        replace('key = "key.pem"', 'key = "nokey.pem"'),
        [
            "spec.toml:15: signing.key: file not found: {dir}/nokey.pem (relative paths are resolved "
            "against the spec's directory)"
        ],
    ),
    (
        "signing-no-key",
        replace('key = "key.pem"', 'date = "0000-00-00"'),
        [
            "spec.toml:14: signing: no signing key: set signing.key to an RSA-3072 PEM key "
            "(`enclave-build keygen --out FILE` makes one) or signing.public_key for external signing"
        ],
    ),
    (
        "signing-section-missing",
        replace('\n[signing]\nkey = "key.pem"\n', ""),
        ["spec.toml: signing: required section [signing] is missing (how the SIGSTRUCT is signed)"],
    ),
    (
        "signing-bad-date",
        replace('key = "key.pem"', 'key = "key.pem"\ndate = "2026-02-30"'),
        [
            "spec.toml:16: signing.date: '2026-02-30' is not a calendar date; allowed: \"YYYY-MM-DD\" "
            'or "0000-00-00"'
        ],
    ),
    (
        "signing-both-keys",
        replace('key = "key.pem"', 'key = "key.pem"\npublic_key = "key.pem"'),
        [
            "spec.toml:16: signing.public_key: give either signing.key (local signing) or "
            "signing.public_key (external signing), not both"
        ],
    ),
    (
        "secrets-bad-server",
        GOOD + '\n[secrets]\nserver = "secrets.example.com"\n',
        [
            "spec.toml:18: secrets.server: 'secrets.example.com' is not allowed; allowed: \"HOST:PORT\", "
            'e.g. "secrets.example.com:4433"'
        ],
    ),
    (
        "image-tag-not-a-name",
        GOOD + '\n[image]\ntag = "Face Detect"\n',
        [
            "spec.toml:18: image.tag: image reference 'Face Detect': invalid repository name "
            "'library/Face Detect' (lower-case letters, digits, '.', '_', '-', '/')"
        ],
    ),
    (
        "other-frameworks-section",
        GOOD + "\n[tfserving]\ngrpc_port = 8500\n",
        [
            "spec.toml:17: tfserving: section [tfserving] belongs to framework 'tfserving', but "
            "service.framework is 'tflite'"
        ],
    ),
    (
        "framework-key-typo-with-its-section",
        replace('framework = "tflite"', 'framwork = "tflite"') + "\n[tflite]\nthreads = 1\n",
        [
            "spec.toml:3: service.framwork: unknown key; did you mean 'framework'? allowed: name, "
            "framework, libos",
            "spec.toml:1: service.framework: required key is missing (the serving framework plugin, "
            "e.g. tfserving)",
        ],
    ),
    (
        "plugin-section-unknown-key",
        GOOD + "\n[tflite]\nthread = 4\n",
        [
            "spec.toml:18: tflite.thread: unknown key; did you mean 'threads'? allowed: grpc_port, "
            "rest_port, threads, instances"
        ],
    ),
    (
        "plugin-section-range",
        GOOD + "\n[tflite]\nrest_port = 70000\n",
        ["spec.toml:18: tflite.rest_port: 70000 is out of range; allowed: 1 to 65535"],
    ),
    (
        "several-problems-at-once",
        replace('size = "2G"', 'size = "3G"').replace("max_threads = 8", 'max_threads = "x"'),
        [
            "spec.toml:11: enclave.size: '3G' is not a power of two; allowed: a power of two with a K, "
            'M or G suffix, e.g. "512M" or "4G"',
            "spec.toml:12: enclave.max_threads: expected an integer, got string 'x'",
        ],
    ),
]

CASES += [
    (
        "encrypted-without-secret-server",
        replace("encrypt = false", "encrypt = true"),
        [
            "spec.toml:8: models[0].encrypt: encrypted models need a key from the secret server at "
            "start-up: set [secrets] server and ca (or encrypt = false)"
        ],
    ),
    (
        "secret-server-without-ca",
        GOOD + '\n[secrets]\nserver = "s.example.com:4433"\n',
        [
            "spec.toml:17: secrets.ca: required with secrets.server: the enclave checks the secret "
            "server's certificate against this CA"
        ],
    ),
]

CASES += [
    (
        "tls-secret-server-without-hosts",
        GOOD + '\n[secrets]\nserver = "s.example.com:4433"\nca = "key.pem"\n\n[tls]\n'
        'issuer = "secret-server"\n',
        [
            'spec.toml:21: tls.hosts: required with issuer = "secret-server": the DNS names '
            'and IP addresses clients connect to, e.g. hosts = ["models.example.com", '
            '"10.0.0.5"]'
        ],
    ),
    (
        "tls-default-issuer-needs-a-secret-server",
        GOOD + '\n[tls]\nhosts = ["models.example.com"]\n',
        [
            'spec.toml:17: tls: [tls] issuer = "secret-server": the enclave gets its serving '
            "certificate from the secret server at start-up: set [secrets] server and ca (or "
            'issuer = "self" for a self-signed RA-TLS certificate)'
        ],
    ),
    (
        "tls-self-with-a-key-file",
        GOOD + '\n[tls]\nissuer = "self"\nhosts = ["10.0.0.5"]\nkey = "key.pem"\n',
        [
            'spec.toml:20: tls.key: not with issuer = "self": the key pair is made inside the '
            'enclave (issuer = "file" serves a provisioned certificate and key)'
        ],
    ),
    (
        "tls-bad-host",
        GOOD + '\n[tls]\nissuer = "self"\nhosts = ["models example"]\n',
        [
            "spec.toml:19: tls.hosts[0]: 'models example' is not allowed; allowed: a DNS name "
            "or an IP address"
        ],
    ),
    (
        "tls-unknown-issuer",
        GOOD + '\n[tls]\nissuer = "ca"\nhosts = ["a.example"]\n',
        ["spec.toml:18: tls.issuer: 'ca' is not allowed; allowed: secret-server, self, file"],
    ),
]
