"""builder.spec_edit: [[models]] keys set in place, everything else byte for byte."""

from __future__ import annotations

import tomllib

import pytest

from enclave_build.builder.errors import UsageError
from enclave_build.builder.spec_edit import set_model_keys

SPEC = """# my project
[service]
name = "p"   # the service
path = "not/a/model"

[[models]]
# the first
name = "a"
path = 'models/a.tflite'   # literal string, with a comment

[[models]]
name = "b"
path = "models/b.tflite"

[signing]
key = "keys/enclave-key.pem"
"""


def test_sets_only_the_keys_of_the_table_asked_for():
    edited = set_model_keys(SPEC, {"path": "models/new one.tflite", "name": "new"})
    assert edited == SPEC.replace('name = "a"', 'name = "new"').replace(
        "path = 'models/a.tflite'   #", 'path = "models/new one.tflite"   #'
    )
    second = set_model_keys(SPEC, {"path": "models/c.tflite"}, index=1)
    assert tomllib.loads(second)["models"][1]["path"] == "models/c.tflite"
    assert tomllib.loads(second)["service"]["path"] == "not/a/model"


@pytest.mark.parametrize(
    "text, why",
    [
        ('models = [{name = "a", path = "x"}]\n', "no line `path"),
        ('[[models]]\nname = "a"\n', "no line `path"),
        ('[[models]]\npath = """\nx"""\n', "no line `path"),
        ("[[models]\n", "invalid TOML"),
    ],
)
def test_a_spec_written_otherwise_is_refused(text, why):
    with pytest.raises(UsageError, match=why):
        set_model_keys(text, {"path": "models/new.tflite"}, source="s.toml")
