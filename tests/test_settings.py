"""Settings: every field validated, unknown keys rejected with the accepted ones named."""

from __future__ import annotations

import pytest

from ascend_compile.settings import Settings


def test_defaults() -> None:
    s = Settings.from_options(None, env={})
    assert (s.executor, s.strict, s.dump_dir, s.disable_passes) == ("auto", False, None, ())


def test_options_override_environment() -> None:
    env = {"ASCEND_BI_STRICT": "1", "ASCEND_BI_DUMP_DIR": "dumps", "ASCEND_BI_EXECUTOR": "fx"}
    assert Settings.from_options(None, env=env) == Settings(executor="fx", strict=True, dump_dir="dumps")
    assert Settings.from_options({"strict": False}, env=env).strict is False


def test_unknown_key_names_it_and_the_accepted_keys() -> None:
    with pytest.raises(ValueError, match=r"unknown option 'graph'; accepted options: capture_sizes, clone_outputs, "
                                         r"disable_passes, dump_dir, executor, graphs, max_capture_size, "
                                         r"pad_values, strict"):
        Settings.from_options({"graph": "on"}, env={})


@pytest.mark.parametrize("options,message", [
    ({"executor": "tvm"}, "accepted values: auto, inductor, fx"),
    ({"strict": "maybe"}, "accepted values: True, False"),
    ({"dump_dir": ""}, "a folder path or None"),
    ({"disable_passes": ["verify_batch_invariance"]}, "cannot be disabled or do not exist"),
    ({"disable_passes": "rewrite_matmul,nope"}, r"\['nope'\]"),
])
def test_bad_values_name_the_key_and_accepted_values(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_options(options, env={})


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ValueError, match="ASCEND_BI_EXECUTOR"):
        Settings.from_options(None, env={"ASCEND_BI_EXECUTOR": "xla"})


def test_disable_passes_accepts_a_comma_list() -> None:
    assert Settings.from_options({"disable_passes": "fix_contiguity"}, env={}).disable_passes == ("fix_contiguity",)
