"""The Dockerfile, checked without a Docker engine (none runs here).

A small parser reads it the way BuildKit does (line continuations, comments, parser directives,
``ARG`` defaults before the first ``FROM``), and the tests check what a broken image would show
only at build or run time: a misspelt instruction, a ``COPY`` of a file that is not in the build
context, an unnamed target, an unpinned base image, a root user, the wrong extra installed, or an
entry point that is not a console script of the project. The install commands themselves are run
for real by tests/integration/test_chart_image.py, which reuses this parser.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

#: Every instruction the Dockerfile reference defines.
INSTRUCTIONS = frozenset({
    "FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
    "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
})
_VAR = re.compile(r"\$\{(\w+)\}|\$(\w+)")


@dataclass
class Instruction:
    line: int
    keyword: str
    #: Everything after the keyword with continuations joined.
    value: str
    #: ``--name=value`` flags (COPY --from, RUN --mount, ...), removed from ``value``.
    flags: dict[str, str] = field(default_factory=dict)


@dataclass
class Stage:
    name: str | None
    base: str
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        """The stage's ENV values (``key=value`` form), later ones winning."""
        out: dict[str, str] = {}
        for inst in self.all("ENV"):
            for token in shlex.split(inst.value):
                key, sep, value = token.partition("=")
                if not sep:
                    raise AssertionError(f"line {inst.line}: use ENV key=value, not the legacy 'ENV key value'")
                out[key] = value
        return out


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage named {name!r}; stages: {[s.name for s in self.stages]}")

    def resolve(self, text: str) -> str:
        """Substitute the global ARG defaults (what FROM lines may use)."""
        return _VAR.sub(lambda m: self.global_args.get(m.group(1) or m.group(2), m.group(0)), text)


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, instruction text) with backslash continuations joined and comments,
    blank lines and parser directives dropped."""
    out: list[tuple[int, str]] = []
    current: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are ignored, as BuildKit does
        if not current:
            start = number
        if stripped.endswith("\\"):
            current.append(stripped[:-1].rstrip())
            continue
        current.append(stripped)
        out.append((start, " ".join(part for part in current if part)))
        current = []
    if current:
        raise AssertionError(f"line {start}: instruction ends with a dangling line continuation")
    return out


def parse(text: str) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, content in logical_lines(text):
        keyword, _, rest = content.partition(" ")
        keyword = keyword.upper()
        if keyword not in INSTRUCTIONS:
            raise AssertionError(f"line {line}: unknown instruction {keyword!r}")
        flags: dict[str, str] = {}
        tokens = rest.split(" ")
        while tokens and tokens[0].startswith("--"):
            name, _, value = tokens.pop(0)[2:].partition("=")
            flags[name] = value
        inst = Instruction(line, keyword, " ".join(tokens).strip(), flags)
        if keyword == "FROM":
            parts = inst.value.split()
            if len(parts) == 3 and parts[1].upper() == "AS":
                stages.append(Stage(parts[2], parts[0], []))
            elif len(parts) == 1:
                stages.append(Stage(None, parts[0], []))
            else:
                raise AssertionError(f"line {line}: FROM takes 'image [AS name]', got {inst.value!r}")
            continue
        if not stages:
            if keyword != "ARG":
                raise AssertionError(f"line {line}: only ARG may come before the first FROM, got {keyword}")
            name, _, default = inst.value.partition("=")
            global_args[name] = default
            continue
        stages[-1].instructions.append(inst)
    if not stages:
        raise AssertionError("no FROM: not a Dockerfile")
    return Dockerfile(global_args, stages)


def load() -> Dockerfile:
    return parse(DOCKERFILE.read_text())


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; ``!`` re-includes; a match on a parent folder
    excludes everything below it; ``**`` matches any number of folders."""
    result = False
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern[1:] if negate else pattern
        glob = glob.lstrip("/")
        candidates = [glob, glob[3:]] if glob.startswith("**/") else [glob]
        if any(fnmatch.fnmatchcase(prefix, g) for prefix in prefixes for g in candidates):
            result = not negate
    return result


def exec_form(inst: Instruction) -> list[str]:
    """ENTRYPOINT/CMD in exec form (a JSON list): the process gets signals directly, no shell."""
    try:
        value = json.loads(inst.value)
    except json.JSONDecodeError as err:
        raise AssertionError(f"line {inst.line}: {inst.keyword} must be in exec form (JSON list)") from err
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def console_scripts() -> dict[str, str]:
    scripts: dict[str, str] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    return scripts


# --- the parser itself ------------------------------------------------------------------------


def test_parser_joins_continuations_and_rejects_unknown_instructions() -> None:
    parsed = parse("ARG BASE=python:3.11\nFROM ${BASE} AS a\n# note\nRUN echo one \\\n  # inner comment\n  two\n")
    assert parsed.global_args == {"BASE": "python:3.11"}
    assert parsed.stages[0].name == "a" and parsed.resolve(parsed.stages[0].base) == "python:3.11"
    assert parsed.stages[0].instructions[0].value == "echo one two"
    with pytest.raises(AssertionError, match="unknown instruction 'RUNN'"):
        parse("FROM scratch\nRUNN true\n")
    with pytest.raises(AssertionError, match="only ARG"):
        parse("RUN true\nFROM scratch\n")
    with pytest.raises(AssertionError, match="dangling"):
        parse("FROM scratch\nRUN true \\\n")


def test_dockerignore_matching_follows_docker_rules() -> None:
    patterns = ["**/__pycache__", "tests", "docs", "!docs/keep.md"]
    assert ignored("operator/__pycache__/x.pyc", patterns)
    assert ignored("tests/unit/test_x.py", patterns)
    assert not ignored("operator/kube.py", patterns)
    assert not ignored("docs/keep.md", patterns)


# --- the Dockerfile -----------------------------------------------------------------------------


def test_targets_are_named_and_copy_from_refers_to_earlier_stages() -> None:
    parsed = load()
    names = [s.name for s in parsed.stages]
    assert "operator" in names and "job" in names
    assert len(names) == len(set(names)), f"duplicate stage names: {names}"
    for index, stage in enumerate(parsed.stages):
        for inst in stage.all("COPY"):
            source = inst.flags.get("from")
            if source is not None:
                assert source in names[:index], f"line {inst.line}: --from={source} is not an earlier stage"


def test_every_copied_file_exists_in_the_build_context() -> None:
    """A COPY whose source is missing or excluded by .dockerignore fails the build."""
    patterns = dockerignore_patterns()
    copied = 0
    for stage in load().stages:
        for inst in stage.all("COPY") + stage.all("ADD"):
            if "from" in inst.flags:
                continue
            *sources, _dest = shlex.split(inst.value)
            for source in sources:
                assert not source.startswith(("/", "..")), f"line {inst.line}: {source} is outside the context"
                assert (REPO / source).exists(), f"line {inst.line}: COPY source {source} does not exist"
                assert not ignored(source, patterns), f"line {inst.line}: {source} is excluded by .dockerignore"
                copied += 1
    assert copied >= 5


def test_dockerignore_keeps_the_repository_noise_out() -> None:
    patterns = dockerignore_patterns()
    for path in (".git/config", "tests/conftest.py", "charts/sampleforge/Chart.yaml", "operator/__pycache__/x.pyc",
                 "sampleforge.egg-info/PKG-INFO", ".mypy_cache/x", "bench/README.md"):
        assert ignored(path, patterns), f"{path} would be sent to the build context"


def test_base_images_are_pinned() -> None:
    parsed = load()
    stage_names = {s.name for s in parsed.stages}
    for stage in parsed.stages:
        base = parsed.resolve(stage.base)
        if base in stage_names or base == "scratch":
            continue
        assert "$" not in base, f"FROM {stage.base}: unresolved variable"
        name, _, tag = base.rpartition(":") if "@" not in base else (base, "", "")
        assert "@sha256:" in base or (name and re.search(r"\d", tag) and tag != "latest"), \
            f"FROM {base}: pin a version tag or a digest"


def test_final_stages_run_as_a_numeric_non_root_user() -> None:
    """runAsNonRoot needs a numeric uid in the image, or the kubelet refuses to start the pod."""
    parsed = load()
    for name in ("operator", "job"):
        users = parsed.stage(name).all("USER")
        assert users, f"stage {name} sets no USER: it would run as root"
        uid, _, gid = users[-1].value.partition(":")
        assert uid.isdigit() and int(uid) != 0, f"stage {name}: USER {users[-1].value} must be a numeric non-root uid"
        assert not gid or (gid.isdigit() and int(gid) != 0)


def test_entry_points_are_the_projects_console_scripts() -> None:
    scripts = console_scripts()
    parsed = load()
    for stage, script in (("operator", "sampleforge-operator"), ("job", "sampleforge-job")):
        entry = parsed.stage(stage).all("ENTRYPOINT")
        assert entry, f"stage {stage} has no ENTRYPOINT"
        assert exec_form(entry[-1]) == [script]
        assert script in scripts, f"{script} is not a [project.scripts] entry of pyproject.toml"


def install_commands(stage: Stage) -> list[str]:
    return [inst.value for inst in stage.all("RUN") if "pip install" in inst.value]


def test_operator_image_installs_only_the_operator_extra_from_the_lock() -> None:
    build = load().stage("operator-build")
    commands = install_commands(build)
    assert commands, "operator-build installs nothing"
    for command in commands:
        assert "-c constraints.txt" in command, f"{command!r} ignores the lock (constraints.txt)"
        assert "jobs" not in command and "test" not in command.split(), f"{command!r} installs more than the operator"
    assert any("--extra operator" in c for c in commands)
    assert any(c.rstrip().endswith("--no-deps .") for c in commands), "the project itself is never installed"


def test_job_image_installs_the_jobs_extra_from_the_lock() -> None:
    commands = install_commands(load().stage("job-build"))
    assert commands and all("-c constraints.txt" in c for c in commands)
    assert any("--extra jobs" in c for c in commands)
    assert not any("--extra operator" in c for c in commands)


def test_dependencies_are_installed_before_the_source_is_copied() -> None:
    """A code change must not invalidate the (large) dependency layer."""
    parsed = load()
    for name in ("operator-build", "job-build"):
        stage = parsed.stage(name)
        lines = {inst.line: inst for inst in stage.instructions}
        deps = next(i.line for i in stage.all("RUN") if "-r pyproject.toml" in i.value)
        source_copies = [i.line for i in stage.all("COPY") if "operator" in i.value or "jobs" in i.value]
        assert source_copies and deps < min(source_copies), f"{name}: the source is copied before the dependencies"
        assert lines[deps].keyword == "RUN"


def test_images_are_read_only_root_friendly() -> None:
    parsed = load()
    for name in ("operator", "job"):
        env = parsed.stage(name).env()
        assert env.get("PYTHONDONTWRITEBYTECODE") == "1", f"{name}: Python would try to write .pyc files"
        assert env.get("HOME", "").startswith("/tmp"), f"{name}: HOME must be writable under a read-only root"
        assert env.get("PATH", "").startswith("/opt/venv/bin:"), f"{name}: the venv's scripts are not on PATH"
    build_env = parsed.stage("operator-build").env()
    assert build_env.get("UV_COMPILE_BYTECODE") == "1", "bytecode must be compiled at build time"


def test_python_and_uv_versions_match_the_development_environment() -> None:
    """The images run the interpreter and installer versions the lock was made and tested with."""
    parsed = load()
    python_image = parsed.resolve("${PYTHON_IMAGE}")
    version = re.match(r"python:(\d+\.\d+\.\d+)-", python_image)
    assert version, python_image
    job_python = next(i.value for i in parsed.stage("job-build").all("RUN") if "uv python install" in i.value)
    assert f"uv python install {version.group(1)}" in job_python
    bootstrap = (REPO / "hack" / "bootstrap.sh").read_text()
    uv_version = re.search(r'UV_VERSION="([^"]+)"', bootstrap)
    assert uv_version and parsed.resolve("${UV_IMAGE}").endswith(f":{uv_version.group(1)}")


# --- the vLLM image ---------------------------------------------------------------------------------

#: Packages whose versions vLLM decides in the job-vllm image (hack/lock_vllm.sh's VLLM_OWN).
VLLM_OWN = re.compile(r"^(torch|triton|nvidia-[a-z0-9-]+|cuda-[a-z-]+|transformers|numpy)$")


def pins(path: Path) -> dict[str, str]:
    """name -> version of a uv-compiled lock."""
    found = (re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line) for line in path.read_text().splitlines())
    return {m.group(1).lower(): m.group(2) for m in found if m}


def test_only_the_vllm_image_installs_vllm_from_its_own_lock() -> None:
    parsed = load()
    commands = install_commands(parsed.stage("job-vllm-build"))
    assert commands and all("-c constraints-vllm.txt" in c for c in commands)
    deps = next(c for c in commands if "-r pyproject.toml" in c)
    assert "--extra jobs" in deps and deps.split()[-1] == "vllm"
    for name in ("operator-build", "job-build"):
        assert not any("vllm" in c for c in install_commands(parsed.stage(name))), f"{name} installs vLLM"


def test_the_vllm_lock_is_the_main_lock_except_what_vllm_pins() -> None:
    main, vllm = pins(REPO / "constraints.txt"), pins(REPO / "constraints-vllm.txt")
    assert re.fullmatch(r"\d+\.\d+\.\d+", vllm["vllm"]) and "vllm" not in main
    assert vllm["torch"] and vllm["transformers"]
    differ = sorted(name for name in main.keys() & vllm.keys() if main[name] != vllm[name] and not VLLM_OWN.match(name))
    assert not differ, f"constraints-vllm.txt moved {differ} off constraints.txt: run hack/lock_vllm.sh"
    # pyproject's ranges admit the vLLM stack too.
    jobs = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["jobs"]
    floor = {r.split(">=")[0]: r.split(">=")[1] for r in jobs if ">=" in r}
    for name in ("torch", "transformers", "numpy"):
        have = tuple(int(p) for p in re.findall(r"\d+", vllm[name])[:2])
        assert have >= tuple(int(p) for p in floor[name].split(".")[:2]), f"{name} {vllm[name]} < {floor[name]}"


def test_the_vllm_image_runs_like_the_job_image() -> None:
    parsed = load()
    stage = parsed.stage("job-vllm")
    assert exec_form(stage.all("ENTRYPOINT")[-1]) == ["sampleforge-job"]
    uid, _, _ = stage.all("USER")[-1].value.partition(":")
    assert uid.isdigit() and int(uid) != 0
    env = stage.env()
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1" and env.get("HOME", "").startswith("/tmp")
    assert env.get("PATH", "").startswith("/opt/venv/bin:") and env.get("VLLM_NO_USAGE_STATS") == "1"
    build = parsed.stage("job-vllm-build")
    deps = next(i.line for i in build.all("RUN") if "-r pyproject.toml" in i.value)
    assert deps < min(i.line for i in build.all("COPY") if "jobs" in i.value)
