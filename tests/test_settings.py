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
    ({"strict": "maybe"}, "accepted values: True, False, 1, 0"),
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


#: Each field's Python value, and the text its environment variable would hold for the same value.
_SAME_VALUE = [
    ("executor", "fx", "fx"),
    ("strict", True, "yes"),
    ("strict", 1, "TRUE"),
    ("clone_outputs", 0, "no"),
    ("dump_dir", "dumps", "dumps"),
    ("disable_passes", ["fix_contiguity", "rewrite_matmul"], "fix_contiguity, rewrite_matmul"),
    ("graphs", "off", "off"),
    ("capture_sizes", 8, "8"),
    ("capture_sizes", [8, 2, 4], "2,4,8"),
    ("max_capture_size", 32, "32"),
    ("pad_values", {"slot_mapping": -1}, "slot_mapping=-1"),
    ("clone_outputs", False, "0"),
]


@pytest.mark.parametrize("name,python,text", _SAME_VALUE)
def test_one_rule_for_values_and_text_in_options_and_environment(name: str, python: object, text: str) -> None:
    """A field reads its Python value and its environment text alike, in ``options=`` and in ``ASCEND_BI_*``."""
    from_value = Settings.from_options({name: python}, env={})
    assert from_value == Settings.from_options({name: text}, env={})
    assert from_value == Settings.from_options(None, env={f"ASCEND_BI_{name.upper()}": text})
    assert from_value != Settings()  # the value was read, not dropped


@pytest.mark.parametrize("name,bad", [
    ("strict", 2), ("strict", "maybe"), ("clone_outputs", None), ("max_capture_size", [8, 16]),
    ("max_capture_size", "8,16"), ("capture_sizes", 0), ("pad_values", "slot_mapping"), ("disable_passes", 3),
])
def test_values_outside_the_rule_are_rejected_everywhere(name: str, bad: object) -> None:
    with pytest.raises(ValueError, match=f"option '{name}'.*accepted values"):
        Settings.from_options({name: bad}, env={})
    if isinstance(bad, str):
        with pytest.raises(ValueError, match=f"ASCEND_BI_{name.upper()}.*accepted values"):
            Settings.from_options(None, env={f"ASCEND_BI_{name.upper()}": bad})
