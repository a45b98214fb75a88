"""builder.output_dir: which directories a command may replace as a whole."""

from __future__ import annotations

import pytest

from enclave_build.builder.errors import UsageError
from enclave_build.builder.output_dir import (
    Protected,
    build_output_problem,
    check_replaceable,
)


def _check(target, protected=()):
    check_replaceable(
        target,
        option="--output",
        written_by="`enclave-build build`",
        problem=build_output_problem,
        protected=protected,
    )


def _build_output(directory):
    (directory / "oci").mkdir(parents=True)
    (directory / "oci" / "oci-layout").write_text("{}")
    (directory / "measurements.json").write_text("{}")
    return directory


def test_new_empty_and_earlier_outputs_may_be_replaced(tmp_path):
    _check(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    _check(tmp_path / "empty")
    out = _build_output(tmp_path / "out")
    (out / "service.json").write_text("{}")
    (out / "secrets-policy.toml").write_text("")
    _check(out)


@pytest.mark.parametrize(
    "contents, reason",
    [
        ({"notes.txt": "x"}, "it holds notes.txt, which no build output holds"),
        ({"a": "", "b": "", "c": "", "d": "", "e": ""}, "it holds a, b, c and 2 more"),
        ({"measurements.json": "{}"}, "not a complete build output"),
    ],
)
def test_anything_else_is_refused_and_kept(tmp_path, contents, reason):
    target = tmp_path / "out"
    target.mkdir()
    for name, text in contents.items():
        (target / name).write_text(text)
    with pytest.raises(UsageError, match=reason) as refused:
        _check(target)
    assert str(target) in str(refused.value)
    assert sorted(p.name for p in target.iterdir()) == sorted(contents)


def test_inputs_are_protected(tmp_path):
    model_dir = tmp_path / "saved" / "1"
    model_dir.mkdir(parents=True)
    model = Protected("models[0].path", model_dir, inside_too=True)
    with pytest.raises(UsageError, match=r"it contains models\[0\].path"):
        _check(tmp_path / "saved", [model])
    with pytest.raises(UsageError, match=r"it is models\[0\].path"):
        _check(model_dir, [model])
    with pytest.raises(UsageError, match=r"it lies inside models\[0\].path"):
        _check(model_dir / "out", [model])
    # a file model: an output next to it is fine
    _check(tmp_path / "out", [Protected("models[0].path", tmp_path / "m.tflite")])
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="exists and is not a directory"):
        _check(tmp_path / "file")
