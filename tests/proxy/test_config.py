"""Config loading as the user meets it: interpolation, `check-config`, and clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy import server
from proxy.config import load_settings
from proxy.errors import ConfigError
from shadoweval.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "configs" / "example.yaml"
EXAMPLE_ENV = {
    "OPENAI_API_KEY": "sk-test-openai",
    "VLLM_API_KEY": "vllm-test",
    "SHADOWEVAL_ADMIN_TOKEN": "adm",
}

MINIMAL = "production:\n  base_url: http://127.0.0.1:9/v1\n"


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_interpolation_of_set_unset_and_defaulted_variables(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "server:\n  port: ${PORT:-8123}\n  host: ${HOST:-0.0.0.0}\n"
        "production:\n  base_url: ${PROD_URL}\n  api_key: ${PROD_KEY:-}\n"
        "admin:\n  token: tok-${SUFFIX:-x}-${SUFFIX2:-y}\n",
    )
    s = load_settings(
        path, env={"PROD_URL": "https://api.example.com/v1/", "HOST": "10.0.0.1", "SUFFIX2": "set"}
    )
    assert s.server.port == 8123
    assert s.server.host == "10.0.0.1"
    assert s.production.base_url == "https://api.example.com/v1"
    assert s.production.api_key is None  # empty default: the client's key is forwarded
    assert s.admin.token == "tok-x-set"
    # A set variable wins over its default.
    s = load_settings(path, env={"PROD_URL": "http://h/v1", "PORT": "9000", "PROD_KEY": "sk-p"})
    assert s.server.port == 9000 and s.production.api_key == "sk-p" and s.server.host == "0.0.0.0"


def test_unset_variable_without_default_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "production:\n  base_url: ${PROD_URL}\n  api_key: ${PROD_KEY}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={"PROD_URL": "http://h/v1"})
    assert "PROD_KEY" in str(info.value) and str(path) in str(info.value)


def test_example_config_is_valid_with_its_env_vars(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in EXAMPLE_ENV.items():
        monkeypatch.setenv(key, value)
    assert main(["check-config", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "ok" in out and "gpt-4o-mini, llama-3.1-8b" in out
    s = load_settings(EXAMPLE, env=EXAMPLE_ENV)
    assert s.production.base_url == "https://api.openai.com/v1"
    assert len(s.candidates) == 2
    assert {c.api_key for c in s.candidates} == {"sk-test-openai", "vllm-test"}
    assert s.admin.token == "adm"
    # Every section of the config is written out, not left to defaults.
    text = EXAMPLE.read_text()
    for section in (
        "server:",
        "production:",
        "candidates:",
        "sampling:",
        "storage:",
        "admin:",
        "logging:",
        "analysis:",
    ):
        assert f"\n{section}" in text


def test_example_config_names_its_missing_variables(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in EXAMPLE_ENV:
        monkeypatch.delenv(key, raising=False)
    assert main(["check-config", str(EXAMPLE)]) == 2
    err = capsys.readouterr().err
    assert "OPENAI_API_KEY" in err and "SHADOWEVAL_ADMIN_TOKEN" in err and "VLLM_API_KEY" in err


@pytest.mark.parametrize(
    ("text", "field", "reason"),
    [
        ("server: {port: 1}\n", "production", "Field required"),
        (MINIMAL + "server: {port: 70000}\n", "server.port", "less than or equal to 65535"),
        (MINIMAL + "sampling: {rate: 1.5}\n", "sampling.rate", "less than or equal to 1"),
        ("production: {base_url: ftp://h/v1}\n", "production.base_url", "must be an http(s) URL"),
        (MINIMAL + "sever: {port: 1}\n", "sever", "Extra inputs are not permitted"),
        (
            MINIMAL + "candidates:\n  - {name: a, base_url: http://h/v1, model: m}\n"
            "  - {name: a, base_url: http://h/v1, model: n}\n",
            "candidates.1.name",
            "duplicate candidate name",
        ),
        (
            MINIMAL + "candidates:\n  - {name: production, base_url: http://h/v1, model: m}\n",
            "candidates.0.name",
            "reserved",
        ),
        (
            MINIMAL + "storage: {redaction: {patterns: ['([']}}\n",
            "storage.redaction.patterns",
            "invalid regex",
        ),
        (MINIMAL + "analysis: {conf_level: 2}\n", "analysis.conf_level", "less than 1"),
        (MINIMAL + "server: {workers: 2, port: 0}\n", "server.port", "fixed port"),
    ],
)
def test_invalid_config_names_the_field_without_traceback(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    text: str,
    field: str,
    reason: str,
) -> None:
    def must_not_start(*args: object, **kwargs: object) -> int:
        raise AssertionError("serve started with an invalid config")

    monkeypatch.setattr(server, "run", must_not_start)
    path = write(tmp_path, text)
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert field in err and reason in err, err
    assert "Traceback" not in err
    # `serve` refuses the same file the same way, before starting anything.
    assert main(["serve", "--config", str(path)]) == 2
    assert field in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("production: [unclosed\n", "not valid YAML"),
        ("- just\n- a list\n", "YAML mapping at the top level"),
    ],
)
def test_unparseable_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needle: str
) -> None:
    assert main(["check-config", str(write(tmp_path, text))]) == 2
    assert needle in capsys.readouterr().err


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read config" in capsys.readouterr().err


def test_check_config_command_in_a_real_process(tmp_path: Path) -> None:
    """The installed entry point: exit status and one clear line, as a shell user sees it."""
    bad = write(tmp_path, MINIMAL + "sampling: {rate: -0.1}\n")
    env = {k: v for k, v in os.environ.items() if k not in EXAMPLE_ENV}
    proc = subprocess.run(
        [sys.executable, "-m", "shadoweval", "check-config", str(bad)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "sampling.rate" in proc.stderr and "greater than or equal to 0" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_references_in_comments_are_ignored_and_values_cannot_inject_yaml(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "# set ${UNSET_IN_COMMENT} to override\n"
        "production:\n  base_url: http://h/v1\n  api_key: ${KEY}\n",
    )
    s = load_settings(path, env={"KEY": "a: b\nadmin: {token: x}"})
    assert s.production.api_key == "a: b\nadmin: {token: x}"
    assert s.admin.token is None
