"""The Dockerfiles in docker/: parsed and checked for the conventions the chart relies on.

They are not built here (no Docker daemon, no registry access): these tests read them.
Conventions: pinned base images, multi-stage builds whose final stage has no build tools, a
non-root user, the CPU torch wheel, and agreement with the chart's values (ports, user ids,
the model-repository layout the init container copies, the Triton tag).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
VALUES = yaml.safe_load((REPO / "helm" / "aisle" / "values.yaml").read_text())
BUILD_TOOLS = ("build-essential", "gcc", "g++", "clang", "make", "cmake", "git", "cargo", "rustc", "pkg-config", "-dev")


@dataclass
class Instruction:
    keyword: str
    args: str

    def words(self) -> list[str]:
        return shlex.split(self.args)

    def exec_form(self) -> list[str] | None:
        try:
            value = yaml.safe_load(self.args)
        except yaml.YAMLError:
            return None
        return value if isinstance(value, list) else None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse(text: str) -> list[Stage]:
    """Stages of a Dockerfile, with global ARG defaults substituted into FROM."""
    logical, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args.get(m.group(1) or m.group(2), m.group(0)), words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif not stages and keyword == "ARG":
            key, _, default = args.partition("=")
            global_args[key] = default
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, args))
    return stages


def pinned(image: str) -> bool:
    """A digest, an exact x.y.z release tag, or an NGC monthly release tag (24.10-py3)."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag or tag in ("", "latest"):
        return False
    return bool(re.match(r"^v?\d+\.\d+\.\d+([-.][\w.-]+)?$", tag) or re.match(r"^\d{2}\.\d{2}-py3$", tag))


def final_user(stage: Stage) -> str | None:
    users = stage.all("USER")
    return users[-1].args.split(":")[0] if users else None


def conventions(text: str, multi_stage: bool) -> list[str]:
    """Problems with the shared conventions; empty when there are none."""
    stages = parse(text)
    problems = []
    if not stages:
        return ["no FROM"]
    for stage in stages:
        if not pinned(stage.base):
            problems.append(f"base image not pinned: {stage.base}")
    final = stages[-1]
    user = final_user(final)
    if user is None or user in ("0", "root"):
        problems.append(f"final stage runs as root (USER {user})")
    if multi_stage:
        if len(stages) < 2:
            problems.append("not a multi-stage build")
        for run in final.all("RUN"):
            if re.search(r"\b(apt-get|apt|apk|yum|dnf)\b.*\binstall\b", run.args):
                tools = [t for t in BUILD_TOOLS if t in run.args]
                if tools:
                    problems.append(f"build tools in the final stage: {tools}")
            if re.search(r"\bpip\b.*\binstall\b", run.args):
                problems.append("pip install in the final stage (build it in an earlier stage)")
        for copy in final.all("COPY"):
            if not copy.args.startswith("--from="):
                problems.append(f"final stage copies from the build context: COPY {copy.args}")
    return problems


def load(name: str) -> tuple[str, list[Stage]]:
    text = (DOCKER / name).read_text()
    return text, parse(text)


# --- the checks themselves can fail -------------------------------------------------------------

def test_conventions_catch_a_bad_dockerfile():
    # Given a single-stage Dockerfile on a floating tag, compiling in the final image, as root
    bad = "FROM python:3.11-slim\nRUN apt-get update && apt-get install -y gcc\nCOPY . /src\nRUN pip install /src\n"
    # When checked
    problems = conventions(bad, multi_stage=True)
    # Then each broken convention is reported
    assert "base image not pinned: python:3.11-slim" in problems
    assert "final stage runs as root (USER None)" in problems
    assert "not a multi-stage build" in problems
    assert any(p.startswith("build tools in the final stage") for p in problems)
    assert any(p.startswith("pip install in the final stage") for p in problems)
    assert any(p.startswith("final stage copies from the build context") for p in problems)


@pytest.mark.parametrize(
    "image,ok",
    [
        ("python:3.11.11-slim-bookworm", True),
        ("nvcr.io/nvidia/tritonserver:24.10-py3", True),
        ("python@sha256:" + "a" * 64, True),
        ("busybox:1.36.1-musl", True),
        ("python:3.11-slim", False),
        ("python", False),
        ("python:latest", False),
        ("registry:5000/python", False),
    ],
)
def test_pinned(image, ok):
    assert pinned(image) is ok


# --- the app image (gateway, workers, beat, migrations, refresh) -------------------------------

def test_app_image_follows_the_conventions():
    text, _ = load("app.Dockerfile")
    assert conventions(text, multi_stage=True) == []


def test_app_image_installs_cpu_torch_before_the_package_and_keeps_only_the_venv():
    _, stages = load("app.Dockerfile")
    build, final = stages[0], stages[-1]
    runs = [r.args for r in build.all("RUN")]
    # Then torch==2.13.0 comes from PyTorch's CPU index, before `pip install` of the package
    torch = next(i for i, r in enumerate(runs) if "torch==2.13.0" in r)
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs[torch]
    package = next(i for i, r in enumerate(runs) if re.search(r"pip install /src\b", r))
    assert torch < package
    # And Python is 3.11, the final stage gets only the virtual environment from the build
    assert re.match(r"python:3\.11\.\d+", final.base) and final.base == build.base
    assert [c.args for c in final.all("COPY")] == ["--from=build /opt/aisle /opt/aisle"]


def test_app_image_runs_aisle_as_the_chart_expects():
    _, stages = load("app.Dockerfile")
    final = stages[-1]
    # Then the entrypoint is the console script, and the default command is the gateway on the chart's ports
    assert final.all("ENTRYPOINT")[-1].exec_form() == ["aisle"]
    cmd = final.all("CMD")[-1].exec_form()
    gateway = VALUES["gateway"]
    assert cmd == ["serve", "--address", f"0.0.0.0:{gateway['port']}", "--metrics-port", str(gateway["metricsPort"])]
    exposed = {int(p) for e in final.all("EXPOSE") for p in e.words()}
    assert exposed == {gateway["port"], gateway["metricsPort"], VALUES["workers"]["metricsPort"]}
    # And its user is the one the chart's pod security context runs as
    assert final_user(final) == str(VALUES["podSecurityContext"]["runAsUser"])
    # And it writes under /tmp only (HOME there; the chart mounts an emptyDir)
    env = " ".join(e.args for e in final.all("ENV"))
    assert "HOME=/tmp" in env and final.all("WORKDIR")[-1].args == "/tmp"


@pytest.mark.parametrize("dockerfile", ["app.Dockerfile", "model-repository.Dockerfile"])
def test_build_context_includes_the_package_and_nothing_else(dockerfile):
    # Given a Dockerfile built from the repository root and its own .dockerignore
    lines = (DOCKER / f"{dockerfile}.dockerignore").read_text().splitlines()
    ignore = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    # Then everything is excluded first, and the project file and every package are re-included
    assert ignore[0] == "**"
    assert "!pyproject.toml" in ignore
    assert {f"!{p}/" for p in packages} <= set(ignore), packages
    # And nothing heavy or secret is re-included
    for path in (".venv", ".git", "tests", "build", ".aisle", "model_repository", "helm", "tools"):
        assert not any(line.startswith(f"!{path}") for line in ignore), path


# --- the model-repository image -----------------------------------------------------------------

def test_model_repository_image_follows_the_conventions():
    text, _ = load("model-repository.Dockerfile")
    assert conventions(text, multi_stage=True) == []


def test_model_repository_image_has_the_layout_the_init_container_copies():
    _, stages = load("model-repository.Dockerfile")
    export, final = stages[0], stages[-1]
    script = " ".join(r.args for r in export.all("RUN"))
    # Then it exports the ngc target into a gpu and a cpu variant, the cpu one with CPU instance groups
    assert re.search(r"aisle export --target ngc --output /out/gpu\b", script)
    assert re.search(r"aisle export --target ngc --output /out/cpu\b", script)
    assert "sed -i 's/KIND_GPU/KIND_CPU/' /out/cpu/*/config.pbtxt" in script
    # And the final image holds them at /model-repository, which the chart's init container reads
    assert [c.args for c in final.all("COPY")] == [f"--from={export.name} /out /model-repository"]
    template = (REPO / "helm" / "aisle" / "templates" / "triton-deployment.yaml").read_text()
    assert 'cp -R /model-repository/{{ $variant }}/. /models/' in template
    assert '$variant := ternary "gpu" "cpu" $t.gpu.enabled' in template
    # And its base has the `sh` and `cp` the init container runs
    assert final.base.startswith(("busybox:", "alpine:"))


# --- the Triton image ---------------------------------------------------------------------------

def test_triton_image_is_nvidias_with_the_python_backend_packages():
    text, stages = load("triton.Dockerfile")
    assert conventions(text, multi_stage=False) == []
    [stage] = stages
    # Then it derives from NVIDIA's Triton at the tag the chart deploys
    assert stage.base.startswith("nvcr.io/nvidia/tritonserver:")
    assert stage.base.split(":")[1] == VALUES["triton"]["image"]["tag"]
    # And installs numpy 1.x (numpy 2 breaks the Python backend's string tensors) and tokenizers
    args = {a.args.split("=")[0]: a.args.split("=", 1)[1] for a in stage.all("ARG")}
    assert args["NUMPY_VERSION"].startswith("1.")
    install = " ".join(r.args for r in stage.all("RUN"))
    assert '"numpy==${NUMPY_VERSION}"' in install and '"tokenizers==${TOKENIZERS_VERSION}"' in install
    # And runs as the user the chart's Triton pod security context names
    assert final_user(stage) == str(VALUES["triton"]["podSecurityContext"]["runAsUser"])
