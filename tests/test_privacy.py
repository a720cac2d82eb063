"""Privacy guarantees: telemetry off everywhere, local endpoints only, private files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from icd10_coder.endpoints import EndpointError, check_endpoint
from icd10_coder.offline import HUB_OFFLINE, subprocess_env, telemetry_defaults

REPO = Path(__file__).resolve().parents[1]
# Each tool the project runs and the switch that keeps it quiet.
REQUIRED = {
    "HF_HUB_DISABLE_TELEMETRY": "1",      # Hugging Face hub, transformers, datasets
    "HF_HUB_DISABLE_UPDATE_CHECK": "1",   # `transformers serve` / `hf` version check
    "AXOLOTL_DO_NOT_TRACK": "1",          # axolotl
    "DO_NOT_TRACK": "1",                  # generic (axolotl, vLLM, ...)
    "WANDB_MODE": "disabled",             # wandb
    "MLFLOW_DISABLE_TELEMETRY": "true",   # MLflow
    "VLLM_NO_USAGE_STATS": "1",           # vLLM
    "VLLM_DO_NOT_TRACK": "1",
}


def test_offline_env_file_turns_every_tool_off():
    defaults = telemetry_defaults()
    for name, value in REQUIRED.items():
        assert defaults.get(name) == value, name
    # The MLflow store is the workspace's (a SQLite file), set by recipes and tools, never a default URI.
    assert "MLFLOW_TRACKING_URI" not in defaults


def test_makefile_exports_the_privacy_env_to_its_commands():
    clean = {k: v for k, v in subprocess_env().items() if k not in telemetry_defaults()}
    result = subprocess.run(["make", "-s", "print-env"], cwd=REPO, env=clean, capture_output=True, text=True,
                            check=True)
    exported = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert exported == telemetry_defaults()


def test_makefile_lets_an_explicit_user_choice_win():
    env = {k: v for k, v in subprocess_env().items() if k not in telemetry_defaults()}
    env["HF_HUB_DISABLE_UPDATE_CHECK"] = "0"
    result = subprocess.run(["make", "-s", "print-env"], cwd=REPO, env=env, capture_output=True, text=True,
                            check=True)
    assert "HF_HUB_DISABLE_UPDATE_CHECK=0" in result.stdout.splitlines()
    assert "DO_NOT_TRACK=1" in result.stdout.splitlines()


def test_python_tools_hand_the_env_to_subprocesses():
    env = subprocess_env(base={"PATH": "/usr/bin"}, hub_offline=True)
    for name, value in REQUIRED.items():
        assert env[name] == value
    for name, value in HUB_OFFLINE.items():
        assert env[name] == value
    child = subprocess.run([sys.executable, "-c", "import os; print(os.environ['WANDB_MODE'])"],
                           env=env, capture_output=True, text=True, check=True)
    assert child.stdout.strip() == "disabled"


def test_libraries_themselves_report_telemetry_off(monkeypatch):
    """Ask axolotl and MLflow whether they would send telemetry under the project's environment."""
    for name, value in subprocess_env(base={}).items():
        monkeypatch.setenv(name, value)
    from axolotl.telemetry.manager import TelemetryManager
    from mlflow.telemetry.utils import is_telemetry_disabled

    assert TelemetryManager._check_telemetry_enabled(object.__new__(TelemetryManager)) is False
    assert is_telemetry_disabled() is True
    monkeypatch.delenv("AXOLOTL_DO_NOT_TRACK")
    monkeypatch.delenv("DO_NOT_TRACK")
    assert TelemetryManager._check_telemetry_enabled(object.__new__(TelemetryManager)) is True  # the check is real


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8000/v1/chat/completions", "http://localhost:8000/v1", "http://[::1]:8000/v1",
    "http://10.1.2.3/v1", "https://192.168.0.10:443/v1", "http://172.20.0.5:8000/v1", "http://[fd00::5]/v1",
])
def test_local_and_private_endpoints_are_accepted(url):
    assert "local/private" in check_endpoint(url)


@pytest.mark.parametrize("url", ["https://8.8.8.8/v1", "http://172.32.0.1/v1", "https://[2001:4860::8888]/v1"])
def test_public_endpoints_are_refused_unless_allowed(url):
    with pytest.raises(EndpointError, match="leave your network"):
        check_endpoint(url)
    assert "REMOTE" in check_endpoint(url, allow_remote=True)


@pytest.mark.parametrize("url", [None, "", "ftp://127.0.0.1/x", "not a url"])
def test_malformed_endpoints_are_refused(url):
    with pytest.raises(EndpointError):
        check_endpoint(url)


def test_evaluate_refuses_a_public_endpoint_before_running_anything(tmp_path):
    import run_eval

    result = CliRunner().invoke(run_eval.main, ["recipes/eval/baseline-llm.yml", "--model-arg",
                                                "base_url=https://8.8.8.8/v1/chat/completions"])
    assert result.exit_code != 0 and "leave your network" in result.output
    assert "Traceback" not in result.output


def test_evaluate_refuses_an_api_key_in_the_config(tmp_path):
    import run_eval

    result = CliRunner().invoke(run_eval.main, ["recipes/eval/baseline-llm.yml", "--model-arg", "api_key=sk-secret"])
    assert result.exit_code != 0 and "OPENAI_API_KEY" in result.output
    assert "sk-secret" not in result.output


def test_evaluate_names_a_missing_adapter(tmp_path):
    import run_eval

    result = CliRunner().invoke(run_eval.main, ["recipes/eval/finetuned-slm.yml", "--model-arg",
                                                f"peft={tmp_path / 'nothing'}"])
    assert result.exit_code != 0 and "adapter" in result.output and "make train" in result.output
