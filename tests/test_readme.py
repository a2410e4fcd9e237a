"""The README's shell examples, run against a live supervisor; each block's output must match the one shown.

A ```sh block is run (all blocks in one bash session, in order, so variables carry over); the ```text block
right after it, if any, is its expected output, where … stands for any text on that line.
```console blocks are shown, not run.
"""
import os
import re
import subprocess

from tests.helpers import REPO, Supervisor

MARK = "@@README-BLOCK-END@@"


def readme_blocks():
    """[(sh source, expected output or None)] in README order."""
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    fences = re.findall(r"```(\w+)\n(.*?)```", text, re.S)
    out = []
    for i, (lang, body) in enumerate(fences):
        if lang == "sh":
            nxt = fences[i + 1] if i + 1 < len(fences) else None
            out.append((body, nxt[1] if nxt and nxt[0] == "text" else None))
    return out


def matches(expected: str, actual: str) -> bool:
    pattern = "".join(".*?" if part == "…" else re.escape(part) for part in re.split("(…)", expected.strip()))
    return re.fullmatch(pattern, actual.strip(), re.S) is not None


def test_the_readme_has_curl_examples_for_every_endpoint():
    source = "\n".join(sh for sh, _ in readme_blocks())
    for route in ("/api/v1/tasks ", "/api/v1/tasks/batch", "/api/v1/tasks/status", "/api/v1/tasks/result",
                  "/api/v1/tasks/$TASK ", "/api/v1/tasks/$TASK/logs", "-X DELETE", "/api/v1/tasks?",
                  "/api/v1/functions", "/api/v1/workers", "/healthz", "/readyz", "/api/v1/openapi.json",
                  "/result?wait_s="):
        assert route in source + " ", route


def test_every_readme_example_runs_and_prints_what_the_readme_shows(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    for name in (".venvs", "examples"):
        os.symlink(os.path.join(REPO, name), work / name)
    blocks = readme_blocks()
    script = "set -uo pipefail\n" + "".join(f"{sh}\necho {MARK}\n" for sh, _ in blocks)
    with Supervisor(tmp_path) as sup:
        script = script.replace("localhost:8081", f"127.0.0.1:{sup.port}")
        run = subprocess.run(["bash", "-c", script], cwd=work, capture_output=True, text=True, timeout=300)
    outputs = run.stdout.split(MARK + "\n")
    assert len(outputs) == len(blocks) + 1, (run.stdout, run.stderr)
    for (sh, expected), actual in zip(blocks, outputs):
        if expected is not None:
            assert matches(expected, actual), f"README block:\n{sh}\nshows:\n{expected}\nbut printed:\n{actual}\n{run.stderr}"
    assert run.stderr == "", run.stderr
