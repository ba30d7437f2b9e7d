"""`facesr serve` and `facesr worker`: start-up refusals, and real processes end to end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from facesr.service import startup
from facesr.service.cli import app
from tests.service.conftest import encode, face_array

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_ERROR = 2
# uvicorn shuts down gracefully on SIGTERM and then re-raises the signal, so -SIGTERM is a clean exit too.
GRACEFUL_EXITS = (0, -signal.SIGTERM)


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for name in list(os.environ):
        if name.upper().startswith("FACESR_") and name.upper() != "FACESR_SHARED_DIR":
            monkeypatch.delenv(name)
    return CliRunner()


def test_serve_refuses_a_bad_setting(runner: CliRunner):
    result = runner.invoke(app, ["serve"], env={"FACESR_MAX_BATCH_SIZE": "0"})

    assert result.exit_code == CONFIG_ERROR
    assert "FACESR_MAX_BATCH_SIZE" in result.stderr


def test_serve_refuses_a_bad_flag(runner: CliRunner):
    result = runner.invoke(app, ["serve", "--max-queue", "0"])

    assert result.exit_code == CONFIG_ERROR
    assert "FACESR_MAX_QUEUE" in result.stderr


def test_serve_names_the_setting_when_the_checkpoint_is_missing(runner: CliRunner, tmp_path: Path):
    missing = tmp_path / "nope.safetensors"
    result = runner.invoke(app, ["serve", "--checkpoint", str(missing)])

    assert result.exit_code == CONFIG_ERROR
    assert "FACESR_CHECKPOINT" in result.stderr
    assert str(missing) in result.stderr


def test_serve_without_a_bundled_checkpoint_says_how_to_fix_it(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(startup, "DEFAULT_CHECKPOINT", tmp_path / "default.safetensors")
    result = runner.invoke(app, ["serve"])

    assert result.exit_code == CONFIG_ERROR
    assert "FACESR_CHECKPOINT" in result.stderr
    assert "bundled default" in result.stderr


def test_serve_refuses_several_embedded_processes(runner: CliRunner):
    result = runner.invoke(app, ["serve", "--workers", "2"])

    assert result.exit_code == CONFIG_ERROR
    assert "FACESR_REDIS_URL" in result.stderr


def test_worker_needs_redis(runner: CliRunner):
    result = runner.invoke(app, ["worker"])

    assert result.exit_code == CONFIG_ERROR
    assert "FACESR_REDIS_URL" in result.stderr


def test_worker_names_the_setting_when_the_checkpoint_is_missing(runner: CliRunner, tmp_path: Path):
    result = runner.invoke(
        app,
        ["worker", "--redis-url", "redis://127.0.0.1:1/0", "--checkpoint", str(tmp_path / "x.safetensors")],
    )

    assert result.exit_code == CONFIG_ERROR
    assert "FACESR_CHECKPOINT" in result.stderr


def test_worker_refuses_a_metrics_port_in_use_before_loading_the_model(
    runner: CliRunner, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
):
    """A second worker on one host with the same FACESR_METRICS_PORT: a clear error, not a traceback."""
    import socket

    from facesr.service.worker import process as worker_process

    def must_not_load(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the model was loaded although the worker cannot start")

    monkeypatch.setattr(worker_process, "load_served_engines", must_not_load)
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # a wildcard bind holds the port on every interface
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(
            app,
            ["worker", "--redis-url", "redis://127.0.0.1:1/0", "--checkpoint", str(tiny_checkpoint)],
            env={"FACESR_METRICS_PORT": str(port)},
        )

    assert result.exit_code == CONFIG_ERROR, result.output
    assert "FACESR_METRICS_PORT" in result.stderr
    assert str(port) in result.stderr


# -- real processes ---------------------------------------------------------------------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("FACESR_")}
    clean.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "facesr.service.cli", *args],
            cwd=REPO_ROOT,
            env={**clean, "OMP_NUM_THREADS": "1", **env},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


def _stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the process exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} never became ready:\n{log.read_text()}")


def _post_face(base_url: str) -> httpx.Response:
    files = {"image": ("f.png", encode(face_array(16, 16)), "image/png")}
    return httpx.post(f"{base_url}/v1/super-resolve", files=files, timeout=60)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for process in started:
            _stop(process)


@pytest.mark.slow
def test_serve_embedded_end_to_end(tiny_checkpoint: Path, tmp_path: Path, processes: list):
    port = _free_port()
    log = tmp_path / "serve.log"
    processes.append(_spawn(["serve", "--port", str(port), "--checkpoint", str(tiny_checkpoint)], {}, log))
    base = f"http://127.0.0.1:{port}"

    _wait_ready(f"{base}/readyz", processes[0], log)
    response = _post_face(base)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert _stop(processes[0]) in GRACEFUL_EXITS, log.read_text()
    assert "Application shutdown complete" in log.read_text()


@pytest.mark.redis
@pytest.mark.slow
def test_serve_with_redis_workers_and_a_worker_process(
    tiny_checkpoint: Path, redis_url: str, tmp_path: Path, processes: list
):
    """Two API processes (Prometheus multiprocess mode) and one `facesr worker` process on Redis."""
    api_port, metrics_port = _free_port(), _free_port()
    env = {"FACESR_REDIS_URL": redis_url, "FACESR_QUEUE_PREFIX": f"cli-{api_port}"}
    worker_log, api_log = tmp_path / "worker.log", tmp_path / "api.log"
    processes.append(
        _spawn(
            [
                "worker",
                "--checkpoint",
                str(tiny_checkpoint),
                "--metrics-port",
                str(metrics_port),
                "--max-batch-size",
                "2",
            ],
            env,
            worker_log,
        )
    )
    processes.append(_spawn(["serve", "--port", str(api_port), "--workers", "2"], env, api_log))
    base = f"http://127.0.0.1:{api_port}"

    _wait_ready(f"http://127.0.0.1:{metrics_port}/readyz", processes[0], worker_log)
    _wait_ready(f"{base}/readyz", processes[1], api_log)
    responses = [_post_face(base) for _ in range(4)]
    assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses]

    api_metrics = httpx.get(f"{base}/metrics", timeout=10).text
    served = sum(
        sample.value
        for family in text_string_to_metric_families(api_metrics)
        for sample in family.samples
        if sample.name == "facesr_http_requests_total"
        and sample.labels == {"route": "/v1/super-resolve", "code": "200"}
    )
    # Whichever process answers the scrape, it reports the requests of both.
    assert served == 4
    worker_metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    inferences = [
        sample.value
        for family in text_string_to_metric_families(worker_metrics)
        for sample in family.samples
        if sample.name == "facesr_inferences_total"
    ]
    assert inferences and inferences[0] >= 4

    assert _stop(processes[1]) in GRACEFUL_EXITS, api_log.read_text()
    assert _stop(processes[0]) in GRACEFUL_EXITS, worker_log.read_text()


def test_training_commands_are_registered_only_where_training_is_installed(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    from facesr.service import cli

    with_training = runner.invoke(cli.build_app(), ["--help"])
    assert with_training.exit_code == 0 and " train " in with_training.output
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: None if name == "yaml" else object())
    serving_only = cli.build_app()
    names = {command.name for command in serving_only.registered_commands}
    assert {"serve", "worker", "enhance"} <= names
    assert not names & {"prepare", "evaluate", "train", "release"}
    result = runner.invoke(serving_only, ["--help"])
    assert "pip install 'facesr[train]'" in " ".join(result.output.split())


def test_without_the_model_runtime_the_help_says_how_to_get_it(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An API-only install: the model commands are absent and `facesr worker` says what to install."""
    from facesr.service import cli

    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: None if name == "torch" else object())
    api_only = cli.build_app()
    names = {command.name for command in api_only.registered_commands}
    assert {"serve", "worker"} <= names
    assert not names & {"enhance", "bench-model", "convert-official", "train"}
    help_text = " ".join(runner.invoke(api_only, ["--help"]).output.split())
    assert "pip install 'facesr[model]'" in help_text and "pip install 'facesr[train]'" in help_text
    result = runner.invoke(api_only, ["worker", "--redis-url", "redis://127.0.0.1:1/0"])
    assert result.exit_code == 2
    assert "pip install 'facesr[model]'" in result.output


def test_version_prints_the_installed_distribution_version(runner: CliRunner) -> None:
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"facesr {version('facesr')}"


# -- the console entry point (`main`): every user error is one line ------------------------------------
FACESR_SCRIPT = Path(sys.executable).with_name("facesr")


def _run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the installed `facesr` console script, as a user does."""
    if not FACESR_SCRIPT.is_file():
        pytest.skip("the facesr console script is not installed beside this Python")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("FACESR_")}
    return subprocess.run(
        [str(FACESR_SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def _run_main(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    """Call `main()` with `facesr ARGS` as the command line; returns its exit status."""
    from facesr.service import cli

    monkeypatch.setattr(sys, "argv", ["facesr", *args])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    code = exited.value.code
    return code if isinstance(code, int) else 0 if code is None else 1


def _one_usage_line(stderr: str, command: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and lines[0].endswith(f" (see {command} --help)"), stderr
    assert "Traceback" not in stderr and "Usage:" not in stderr
    return lines[0]


def test_a_usage_error_from_the_console_script_is_one_line(tmp_path: Path) -> None:
    result = _run_script("enhance", "face.png", "-o", "out", "--fit", "stretch", cwd=tmp_path)

    assert result.returncode == CONFIG_ERROR, result.stderr
    assert "--fit" in _one_usage_line(result.stderr, "facesr enhance") and "stretch" in result.stderr
    assert result.stdout == "" and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "command", "complaint"),
    [
        (["enhance", "face.png"], "facesr enhance", "'--output' / '-o'"),  # a required option is missing
        (["enhance", "-o", "out"], "facesr enhance", "'inputs'"),  # a required argument is missing
        (["enhance", "face.png", "-o", "out", "--no-such"], "facesr enhance", "--no-such"),
        (["enhance", "face.png", "-o", "out", "--batch-size", "0"], "facesr enhance", "--batch-size"),
        (["serve", "--port", "eighty"], "facesr serve", "--port"),
        (["no-such-command"], "facesr", "no-such-command"),
        (["--no-such-option"], "facesr", "--no-such-option"),
    ],
)
def test_usage_errors_are_one_line_with_status_2(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    args: list[str],
    command: str,
    complaint: str,
) -> None:
    monkeypatch.chdir(tmp_path)

    assert _run_main(monkeypatch, *args) == CONFIG_ERROR
    captured = capsys.readouterr()
    assert complaint in _one_usage_line(captured.err, command)
    assert captured.out == "" and list(tmp_path.iterdir()) == []


def test_facesr_alone_prints_the_help(tmp_path: Path) -> None:
    result = _run_script(cwd=tmp_path)

    assert result.returncode == CONFIG_ERROR  # click's status for `no_args_is_help`, as before
    assert "Usage: facesr" in result.stdout and "enhance" in result.stdout and "serve" in result.stdout
    assert "error" not in result.stderr.lower() and "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [["--help"], ["serve", "--help"], ["enhance", "--help"]])
def test_help_exits_0(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    assert _run_main(monkeypatch, *args) == 0
    captured = capsys.readouterr()
    assert f"Usage: facesr {args[0] if len(args) > 1 else ''}".strip() in captured.out
    assert captured.err == ""


def test_version_from_the_console_script(tmp_path: Path) -> None:
    from importlib.metadata import version

    result = _run_script("--version", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"facesr {version('facesr')}" and result.stderr == ""


def test_a_command_exit_status_is_kept(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`typer.Exit(2)` from a configuration refusal stays 2, with the command's own message."""
    for name in list(os.environ):
        if name.upper().startswith("FACESR_") and name.upper() != "FACESR_SHARED_DIR":
            monkeypatch.delenv(name)

    assert _run_main(monkeypatch, "worker") == CONFIG_ERROR
    captured = capsys.readouterr()
    assert "FACESR_REDIS_URL" in captured.err and "--help" not in captured.err


def test_ctrl_c_before_a_command_runs_exits_130_quietly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from facesr.service import cli

    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "app", interrupted)

    assert _run_main(monkeypatch, "--help") == 130
    assert "Traceback" not in capsys.readouterr().err
