"""Driver configuration files: shell-style data, never sourced."""

import pytest

from vaf.config import DriverConfig, load_config, parse_config
from vaf.errors import ConfigError


@pytest.mark.parametrize("text, expected", [
    ("ZERO_LVM_ON_CREATE=yes", {"ZERO_LVM_ON_CREATE": "yes"}),
    ('SSH="ssh -F /etc/one/ssh_config"', {"SSH": "ssh -F /etc/one/ssh_config"}),
    ("A='x y' # comment", {"A": "x y"}),
    ("export B=1", {"B": "1"}),
    ("# only a comment\n\n  C=3  ", {"C": "3"}),
    ("EMPTY=", {"EMPTY": ""}),
    # never executed: command substitution stays literal text
    ("D='$(touch /tmp/vaf-pwned)'", {"D": "$(touch /tmp/vaf-pwned)"}),
])
def test_parse(text, expected):
    assert parse_config(text) == expected


@pytest.mark.parametrize("text, message", [
    ("lowercase=1", "expected KEY=value"),
    ("JUST_A_WORD", "expected KEY=value"),
    ('Q="unterminated', "No closing quotation"),
])
def test_parse_errors_name_the_line(text, message):
    with pytest.raises(ConfigError, match=f"my.conf:1: .*{message}|{message}"):
        parse_config(text, "my.conf")


def test_typed_getters():
    conf = DriverConfig({"N": "5", "B": "Yes", "L": "a, b c", "C": "Thin", "F": "1.5",
                         "S": "ssh -p 2222"}, "t.conf")
    assert conf.int("N", 1, minimum=1, maximum=10) == 5
    assert conf.int("MISSING", 7) == 7
    assert conf.bool("B", False) is True
    assert conf.list("L") == ("a", "b", "c")
    assert conf.choice("C", "thin", ("thin", "classic")) == "thin"
    assert conf.float("F", 0.0) == 1.5
    assert conf.argv("S", ("ssh",)) == ("ssh", "-p", "2222")
    assert conf.argv("NOPE", ("ssh",)) == ("ssh",)


@pytest.mark.parametrize("getter, message", [
    (lambda c: c.int("N", 1, maximum=3), "N in t.conf must be between None and 3, got 5"),
    (lambda c: c.int("B", 1), "B in t.conf must be an integer"),
    (lambda c: c.bool("N", True), "N in t.conf must be yes or no"),
    (lambda c: c.choice("B", "thin", ("thin", "classic")), "must be one of thin, classic"),
])
def test_bad_values_are_clear(getter, message):
    conf = DriverConfig({"N": "5", "B": "maybe"}, "t.conf")
    with pytest.raises(ConfigError, match=message):
        getter(conf)


def test_missing_file_means_defaults(tmp_path):
    conf = load_config(tmp_path / "absent.conf", environ={})
    assert conf.source == "<defaults>" and conf.int("X", 3) == 3


def test_environment_overrides_ssh_like_stock_drivers(tmp_path):
    path = tmp_path / "d.conf"
    path.write_text('SSH="ssh -p 22"\nOTHER=1\n')
    conf = load_config(path, environ={"SSH": "ssh -F /tmp/cfg", "OTHER": "2"})
    assert conf.argv("SSH", ()) == ("ssh", "-F", "/tmp/cfg")
    assert conf.str("OTHER", "") == "1"  # only SSH/SUDO come from the environment
