"""The whole comparison, offline, on embedded defaults (``make demo``).

prepare --demo (plain prompts, and prompts with the top-10 retrieval shortlist) -> axolotl
training of recipes/demo-cpu.yml and recipes/demo-cpu-shortlist.yml -> lm-eval of Retrieval
(no model), the Baseline SLM and the Finetuned SLM, each SLM with and without the shortlist
-> the Baseline LLM through a real OpenAI-compatible server on 127.0.0.1 (``transformers
serve`` with the embedded model standing in for the large model), with and without the
shortlist -> report. Each stage is the same command a user would type; this script only
chains them, serves the local endpoint and records how long each stage took. To stay
within ~15 minutes on 2 cores, the shortlist leg trains one epoch instead of the recipe's two.

Everything happens in the demo's own workspace (default ``outputs/demo/``): the real
run's ``data/prepared/``, ``outputs/adapters/``, ``outputs/eval/``, ``outputs/report/``
and ``outputs/mlflow.db`` are never read or written.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))
from icd10_coder.offline import workspace_env  # noqa: E402
from icd10_coder.paths import EMBEDDED_MODEL, REPO_ROOT, display_path  # noqa: E402
from icd10_coder.stages import run  # noqa: E402
from icd10_coder.workspace import DEMO_WORKSPACE, Workspace  # noqa: E402

RECIPE = "recipes/demo-cpu.yml"
SHORTLIST_RECIPE = "recipes/demo-cpu-shortlist.yml"
SHORTLIST_K = 10
SLM_CONFIGS = ["recipes/eval/baseline-slm.yml", "recipes/eval/finetuned-slm.yml"]
TOOLS = REPO_ROOT / "tools"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def local_openai_server(model: Path, workspace: Workspace, timeout_s: float = 180):
    """``transformers serve`` on 127.0.0.1; yields the chat-completions URL, stops the server after."""
    port = free_port()
    log = workspace.outputs / "llm-server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle:
        server = subprocess.Popen(
            [str(BIN / "transformers"), "serve", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
             "--dtype", "float32", str(model)],
            stdout=handle, stderr=subprocess.STDOUT, env=workspace_env(workspace, hub_offline=True), cwd=REPO_ROOT)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if server.poll() is not None:
                    raise click.ClickException(f"the local model server exited early; see {log}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise click.ClickException(f"the local model server did not answer in {timeout_s:.0f} s; see {log}")
                time.sleep(1)
            yield f"http://127.0.0.1:{port}/v1/chat/completions"
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--workspace", default=str(DEMO_WORKSPACE.relative_to(REPO_ROOT)), show_default=True, metavar="DIR",
              help="The demo's own workspace; its earlier demo results are replaced. Never the checkout itself.")
@click.option("--skip-llm", is_flag=True, help="Leave out the Baseline LLM (it is then reported as missing).")
def main(workspace: str, skip_llm: bool) -> None:
    """Run the offline demo end to end in its own workspace and write its report."""
    if not (EMBEDDED_MODEL / "config.json").is_file():
        raise click.ClickException(f"{EMBEDDED_MODEL} is missing: run `make setup` first")
    try:
        space = Workspace.at(workspace)
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    if space.is_real:
        raise click.ClickException("the demo never runs in the real run's workspace (the checkout); "
                                   "pick another --workspace")
    os.umask(0o077)  # everything the demo writes quotes (synthetic) dialogues: owner-only
    timings: dict[str, float] = {}
    python = sys.executable
    ws = ["--workspace", str(space.root)]
    # Earlier demo results would mix into this report; axolotl's token cache would hide
    # freshly prepared data. Only the demo's own workspace is touched.
    for stale in (space.eval_dir, space.report_dir, space.axolotl_cache, space.adapters_dir):
        shutil.rmtree(stale, ignore_errors=True)
    started = time.perf_counter()
    run("prepare", [python, "tools/prepare.py", "--demo", *ws], timings, space)
    run("prepare with shortlist", [python, "tools/prepare.py", "--demo", "--shortlist", str(SHORTLIST_K), *ws],
        timings, space)
    run("train", [python, "tools/train.py", RECIPE, *ws], timings, space)
    run("train with shortlist (1 epoch)", [python, "tools/train.py", SHORTLIST_RECIPE, *ws, "--num_epochs=1"],
        timings, space)
    run("eval retrieval + baseline-slm + finetuned-slm",
        [python, "tools/run_eval.py", *ws, "recipes/eval/retrieval.yml", *SLM_CONFIGS], timings, space)
    run("eval with shortlist: baseline-slm + finetuned-slm",
        [python, "tools/run_eval.py", *ws, "--shortlist", "--recipe", SHORTLIST_RECIPE, *SLM_CONFIGS], timings, space)
    if not skip_llm:
        llm_started = time.perf_counter()
        with local_openai_server(EMBEDDED_MODEL, space) as url:
            timings["llm server start"] = round(time.perf_counter() - llm_started, 1)
            llm = ["recipes/eval/baseline-llm.yml", "--model-arg", f"base_url={url}", "--model-arg",
                   f"model={EMBEDDED_MODEL}", "--model-arg", "num_concurrent=1"]
            run("eval baseline-llm (local OpenAI-compatible server)", [python, "tools/run_eval.py", *ws, *llm],
                timings, space)
            run("eval baseline-llm with shortlist", [python, "tools/run_eval.py", *ws, "--shortlist", *llm],
                timings, space)
    run("report", [python, "tools/report.py", *ws], timings, space)
    timings["total"] = round(time.perf_counter() - started, 1)
    (space.report_dir / "demo_timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    click.secho("\nDemo finished. Stage times (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()), bold=True)
    click.echo(f"Report: {display_path(space.report_dir)}/report.md; MLflow: mlflow ui --backend-store-uri "
               f"{space.recipe_tracking_uri()}")


if __name__ == "__main__":
    main()
