"""The documentation: the README is a first screen, the site builds strictly and renders, and every command in a
`bash` block of the README or the site runs.

How the commands run (`test_every_readme_command_runs`, `test_every_command_of_a_page_runs`): in a sandbox folder
holding small inputs under the names the docs use (`pairs.jsonl`, `corpus.jsonl`, `docs.jsonl`, ...; `examples/`
copied; `../shared` the real data), block by block in the order a reader meets them, so later blocks use what earlier
ones made (`runs/pubmedqa`, `runs/mine`); each site page (a test of its own) starts from a copy of what the README's
blocks left, less the search index `runs/mine/index` (the quickstart builds it again, as a reader new to it would).
A `yaml` block that defines `output_dir: runs/mine` is written as `my-run.yaml` for the `ragtune run my-run.yaml`
after it; one whose first line is a comment naming a YAML file (`# shards-run.yaml: ...`) is written under that
name. `ragtune` commands run in this process through the command's typer app (`python` lines and `ragtune serve` as
subprocesses); a `ragtune run` the README ran with the same config is not run again on a later page (it starts from
a copy of the results). Four adaptations, and only these:
- set-up and test lines (`python3 -m venv`, `pip install`, `apt-get`, `ruff check`, `pytest`) are not run: they are
  what `.ci/run` itself executes;
- `ragtune run` gets `--set data.max_pairs=60 --set train.epochs=1 --allow-regression` (tiny data, where the tuned
  and base model often tie; the model stays the real one);
- `ragtune serve` is started in the background on a free port (the block's `127.0.0.1:8000` is pointed at it), the
  next lines of its block run against it, and it is stopped;
- a page whose commands use `--ray-address auto` (a reader's running cluster) runs with a local Ray cluster started
  for it (`ray start --head`, loopback, no dashboard) and stopped after its last block.
"""

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, SHARED, write_jsonl
from helpers import toy_rows

SETUP = ("python3 -m venv", "pip install", "apt-get", ". .venv/bin/activate", "ruff check", "pytest")
# Every documented `ragtune run` runs, made small: 60 pairs, one epoch, texts cut at 64 tokens (on an AVX2 EPYC the
# MedQuAD and PubMedQA examples took 63 s and 53 s at the model's 256 tokens, 34 s and 22 s at 64).
TINY_RUN = [
    "--set",
    "data.max_pairs=60",
    "--set",
    "train.epochs=1",
    "--set",
    "train.max_seq_length=64",
    "--set",
    "evaluate.max_seq_length=64",
    "--allow-regression",
]


def _pages() -> list[Path]:
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    return [ROOT / "README.md"] + [ROOT / "docs" / next(iter(item.values())) for item in nav]


def _blocks(path: Path) -> list[tuple[str, str]]:
    return re.findall(r"```(\w+)\n(.*?)```", path.read_text(), re.S)


def test_readme_is_a_first_screen_with_the_two_set_up_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    commands = [code.strip() for lang, code in _blocks(ROOT / "README.md") if lang == "bash"]
    assert ci in commands  # .ci/run runs exactly the README's test command
    assert any(c.startswith("python3 -m venv") and c.endswith("ragtune run examples/pubmedqa.yaml") for c in commands)
    for target in re.findall(r"\]\(((?:docs/)?[\w./-]+\.(?:md|png))(?:#[\w-]+)?\)", readme):
        assert (ROOT / target).exists(), target


def test_the_site_builds_strictly_with_generated_references(tmp_path):
    site = tmp_path / "site"
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert built.returncode == 0, built.stderr
    from ragtune.config import RunConfig, TrainConfig

    config_page = (site / "configuration" / "index.html").read_text()
    for name, field in TrainConfig.model_fields.items():
        assert f"train.{name}" in config_page and field.description, name  # every setting, described
    assert RunConfig.model_fields["eval_sets"].description in config_page.replace("&#39;", "'")
    cli_page = (site / "cli" / "index.html").read_text()
    assert "--max-request-tokens" in cli_page and "--quiet" in cli_page
    assert "<code>least-similar</code> | <code>hard</code>" in cli_page  # an option's choices, in one cell
    api_page = (site / "python-api" / "index.html").read_text()
    assert "ragtune.fine_tune" in api_page and "Holm-adjusted" in api_page


def test_a_broken_link_fails_the_build(tmp_path):
    copy = tmp_path / "project"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    faq = copy / "docs" / "faq.md"
    faq.write_text(faq.read_text() + "\nSee [nothing](no-such-page.md).\n")
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=copy,
        capture_output=True,
        text=True,
    )
    assert built.returncode != 0 and "no-such-page.md" in built.stderr


def test_the_home_page_renders_in_chromium(tmp_path):
    from test_report_browser import chrome

    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "-d", str(site)], cwd=ROOT, check=True, capture_output=True
    )
    with chrome(tmp_path) as browser:
        browser.set_window_size(1280, 900)
        browser.get((site / "index.html").as_uri())
        title = browser.title
        heading = browser.find_element("css selector", "article h1").text
        image = browser.find_element("css selector", "article img")
        loaded = browser.execute_script("return arguments[0].naturalWidth", image)
        browser.save_screenshot(str(tmp_path / "home.png"))
    assert "ragtune" in title and heading == "ragtune" and loaded > 0
    assert (tmp_path / "home.png").stat().st_size > 10_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sandbox(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "shared").symlink_to(SHARED.parent)
    shutil.copytree(ROOT / "examples", work / "examples")
    write_jsonl(work / "pairs.jsonl", toy_rows(60))
    corpus = [{"id": f"d{i}", "text": r["passage"], "year": 2000 + i % 5} for i, r in enumerate(toy_rows(30))]
    write_jsonl(work / "corpus.jsonl", corpus)
    write_jsonl(work / "my-corpus.jsonl", corpus)
    write_jsonl(work / "more_docs.jsonl", [{"id": "new1", "text": "Growth hormone rises with exercise in the young."}])
    write_jsonl(
        work / "docs.jsonl",
        [{"id": f"doc{i}", "text": " ".join([r["passage"]] * 30)} for i, r in enumerate(toy_rows(4))],
    )
    users = work / "users-beir-folder"
    (users / "qrels").mkdir(parents=True)
    write_jsonl(users / "corpus.jsonl", [{"_id": c["id"], "title": "", "text": c["text"]} for c in corpus])
    write_jsonl(
        users / "queries.jsonl",
        [{"_id": f"q{i}", "text": f"what is the {r['passage'][4:9]} for"} for i, r in enumerate(toy_rows(30))],
    )
    (users / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(30))
    )
    shutil.copytree(users, work / "users-beir")
    (work / "corpus").mkdir()
    write_jsonl(work / "corpus" / "part-000.jsonl", corpus[:15])  # the shard path reads a folder of corpus files
    write_jsonl(work / "corpus" / "part-001.jsonl", corpus[15:])
    pairs = [{"query": r["query"], "positive_id": f"d{i}"} for i, r in enumerate(toy_rows(30))]
    write_jsonl(work / "train.jsonl", pairs[:24])
    write_jsonl(work / "test.jsonl", pairs[24:])
    return work


def _commands(block: str) -> list[str]:
    """A block's commands: continued lines joined, `a && b` chains split, set-up steps dropped, comments kept out."""
    out = []
    for line in re.sub(r"\\\n\s*", " ", block).splitlines():
        line = line.split("  #")[0].strip()
        for part in (p.strip() for p in line.split(" && ")):
            if part and not part.startswith(SETUP):
                out.append(part)
    return out


def _run(command: str, work: Path) -> tuple[int, str]:
    """Run one command in `work`: its exit status and what it printed."""
    argv = shlex.split(command)
    if argv[:2] == ["ragtune", "run"]:
        argv += TINY_RUN
    if argv[0] == "ragtune":
        # In this process, through the `ragtune` command's typer app: a subprocess per command would import torch
        # and sentence-transformers again, ~6 s of CPU each for some 40 commands. (The entry point itself, and its
        # one-line errors with exit status 2, are tested as subprocesses in test_cli.py.)
        from typer.testing import CliRunner

        from ragtune.cli import app

        here = Path.cwd()
        os.chdir(work)
        try:
            done = CliRunner().invoke(app, argv[1:])
        finally:
            os.chdir(here)
        failure = "".join(traceback.format_exception(*done.exc_info)) if done.exception else ""
        return done.exit_code, done.output + failure
    if argv[0] == "python":
        argv[0] = sys.executable
    done = subprocess.run(argv, cwd=work, capture_output=True, text=True, timeout=900)
    return done.returncode, done.stdout + done.stderr


@pytest.fixture(scope="module")
def readme_ran(tmp_path_factory) -> tuple[Path, set[tuple[str, str]], list[str]]:
    """The README's commands run once (per test process): the sandbox they left, the runs they made, the commands."""
    readme = _sandbox(tmp_path_factory.mktemp("docs"))
    runs: set[tuple[str, str]] = set()
    return readme, runs, _run_page(ROOT / "README.md", readme, runs)


def _command_pages() -> list:
    """The site's pages with commands, in navigation order."""
    return [
        pytest.param(page, id=page.name) for page in _pages()[1:] if any(lang == "bash" for lang, _ in _blocks(page))
    ]


@pytest.mark.slow
def test_every_readme_command_runs(readme_ran):
    readme, _, ran = readme_ran
    assert any(c.startswith("ragtune run examples/pubmedqa.yaml") for c in ran) and len(ran) >= 5
    assert json.loads((readme / "runs" / "mine" / "results.json").read_text())["eval_sets"]["users"]["queries"] == 30


@pytest.mark.slow
@pytest.mark.parametrize("page", _command_pages())
def test_every_command_of_a_page_runs(page, readme_ran):
    readme, runs, _ = readme_ran
    work = readme.parent / page.stem  # each page starts from what the README left (runs/pubmedqa, runs/mine)
    shutil.copytree(readme, work, symlinks=True)
    shutil.rmtree(work / "runs" / "mine" / "index")
    ran = _run_page(page, work, set(runs))
    # Every command of its blocks ran, except `ragtune serve` (started in the background) and the README's runs.
    listed = [c for lang, block in _blocks(page) if lang == "bash" for c in _commands(block)]
    listed = [c for c in listed if not c.startswith("ragtune serve")]
    rerun = [c for c in listed if c in {command for command, _ in runs}]
    assert len(listed) - len(rerun) <= len(ran) <= len(listed) and ran, (page.name, ran)
    if page.name == "serving.md":
        assert (work / "runs" / "pubmedqa" / "model" / "onnx").is_dir()


def _run_page(page: Path, work: Path, runs: set[tuple[str, str]]) -> list[str]:
    """Run a page's blocks in `work`. A `ragtune run` the README ran with the same config file contents (the
    quickstart's `ragtune run my-run.yaml`) is not run again: every page starts from a copy of its results."""
    ran = []
    blocks = _blocks(page)
    ray = any(lang == "bash" and "--ray-address auto" in block for lang, block in blocks)
    with _ray_cluster() if ray else contextlib.nullcontext():  # one cluster for the page, as a reader has one
        for lang, block in blocks:
            ran += _run_block(page, work, lang, block, runs)
    return ran


def _run_block(page: Path, work: Path, lang: str, block: str, runs: set[tuple[str, str]]) -> list[str]:
    """Run one block: a `yaml` block is written where the commands after it read it, a `bash` block's commands run."""
    if lang == "yaml" and "output_dir: runs/mine" in block:
        (work / "my-run.yaml").write_text(block)
    named = re.match(r"# ([\w.-]+\.yaml):", block) if lang == "yaml" else None
    if named:
        (work / named.group(1)).write_text(block)
    if lang != "bash":
        return []
    ran = []
    server, port = None, None
    try:
        for command in _commands(block):
            if command.startswith("ragtune serve"):
                if server is not None:  # a second server in the block replaces the first
                    _stop(server)
                server, port = _serve(command, work)
                continue
            if port:
                command = command.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
            if command.startswith("ragtune run "):
                config = (work / shlex.split(command)[2]).read_text()
                if (command, config) in runs:
                    continue
                if page.name == "README.md":
                    runs.add((command, config))
            status, printed = _run(command, work)
            assert status == 0, f"{page.name}: {command}\n{printed}"
            ran.append(command)
    finally:
        if server is not None:
            _stop(server)
    return ran


@contextlib.contextmanager
def _ray_cluster() -> Iterator[None]:
    """A running Ray cluster on this machine (loopback, no dashboard) for a page's `--ray-address auto`, as a
    reader's cluster would be; stopped after."""
    ray = str(Path(sys.executable).parent / "ray")
    start = [ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={_free_port()}", "--num-cpus=2"]
    start += ["--include-dashboard=false", "--disable-usage-stats"]
    subprocess.run(start, check=True, capture_output=True, timeout=300)
    try:
        yield
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=300)


def _stop(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGINT)
    server.wait(timeout=30)


def _serve(command: str, work: Path) -> tuple[subprocess.Popen, int]:
    """Start `ragtune serve` on a free loopback port (the block's client lines, written for the default port 8000,
    are pointed at it)."""
    port = _free_port()
    argv = [sys.executable, "-m", "ragtune", *shlex.split(command)[1:], "--port", str(port)]
    server = subprocess.Popen(argv, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    import httpx

    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail(f"{command}: the server did not come up\n{server.stdout.read()}")
    return server, port
