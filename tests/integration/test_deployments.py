"""prefect.yaml deploys against a real server: every deployment, with its parameters, schedule and limits; and
its Docker variant (Dockerfile, .dockerignore, deploy/docker.prefect.yaml), checked without a Docker daemon:
each step against prefect-docker's functions, the image's files and install command, its deployments."""

from __future__ import annotations

import inspect
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.deployments.steps.core import RESERVED_KEYWORDS
from prefect.settings import PREFECT_API_URL
from prefect.utilities.importtools import import_object
from setuptools import find_namespace_packages

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOCKER_FILE = ROOT / "deploy" / "docker.prefect.yaml"


def prefect_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    return subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=ROOT,
    )


def project(path: Path = ROOT / "prefect.yaml") -> dict:
    return yaml.safe_load(path.read_text())


async def test_deploy_all(prefect_harness):
    pool = prefect_cli("work-pool", "create", "local-process", "--type", "process", "--overwrite")
    assert pool.returncode == 0, pool.stderr
    out = prefect_cli("--no-prompt", "deploy", "--all")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    declared = {d["name"]: d for d in project()["deployments"]}
    async with get_client() as client:
        deployments = {d.name: d for d in await client.read_deployments()}
    assert set(declared) <= set(deployments)
    for name, spec in declared.items():
        deployment = deployments[name]
        assert deployment.work_pool_name == "local-process"
        assert deployment.parameters == spec.get("parameters", {})
        # a module path: a worker imports the installed package, wherever it runs
        assert deployment.entrypoint == spec["entrypoint"] and ":" not in deployment.entrypoint
        # stored as written: $PWD is read by the flow-run process (the worker's directory), not at deploy time
        assert deployment.pull_steps == project()["pull"]
        # the UI renders a form from this schema: every parameter is described
        props = deployment.parameter_openapi_schema["properties"]
        assert props and all(p.get("description") for p in props.values()), name


# --- the Docker variant ------------------------------------------------------------------------------------


def steps(spec: dict) -> list[tuple[str, dict]]:
    """(function name, inputs) of every build, push and pull step, in order."""
    sections = [spec.get(section) or [] for section in ("build", "push", "pull")]
    return [next(iter(step.items())) for section in sections for step in section]


def placeholders(value: object) -> set[str]:
    return set(re.findall(r"\{\{\s*([^}\s]+)\s*\}\}", yaml.safe_dump(value)))


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions: (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    lines = [line.strip() for line in re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text()).splitlines()]
    found = [line.partition(" ") for line in lines if line and not line.startswith("#")]
    return [(op.upper(), args.strip()) for op, _, args in found]


_GLOB_PARTS = {r"\*\*/": "(?:.*/)?", r"\*\*": ".*", r"\*": "[^/]*", r"\?": "[^/]"}


def _glob_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern: ``*`` and ``?`` stay within one path segment, ``**`` crosses them."""
    escaped = re.escape(pattern.strip("/"))
    return re.compile(
        re.sub(r"\\\*\\\*/|\\\*\\\*|\\\*|\\\?", lambda m: _GLOB_PARTS[m.group(0)], escaped) + r"\Z"
    )


def build_context() -> list[str]:
    """The files `docker build` sends, relative to the root. Docker's rule: the last .dockerignore pattern
    matching a path or one of its parent folders decides (``!`` includes)."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        if (line := line.strip()) and not line.startswith("#"):
            rules.append((line.startswith("!"), _glob_regex(line.lstrip("!"))))

    def ignored(rel: str) -> bool:
        parts = rel.split("/")
        paths = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        verdict = False
        for include, regex in rules:
            if any(regex.match(p) for p in paths):
                verdict = not include
        return verdict

    files = []
    for folder, dirs, names in os.walk(ROOT):
        rel = Path(folder).relative_to(ROOT).as_posix()
        inside = (lambda name: name) if rel == "." else (lambda name: f"{rel}/{name}")  # noqa: B023
        # an ignored folder is skipped whole (no pattern here re-includes a file below one)
        dirs[:] = [d for d in dirs if not ignored(inside(d))]
        files += [inside(n) for n in names if not ignored(inside(n))]
    return files


def test_docker_steps_match_the_step_functions():
    """Each step's function imports, its inputs bind to the function's signature, and every placeholder is an
    environment variable or an output of an earlier step (as prefect-docker's result types declare them)."""
    from prefect_docker.worker import DockerWorker

    spec = project(DOCKER_FILE)
    outputs: dict[str, set[str]] = {}
    for fqn, inputs in steps(spec):
        func = import_object(fqn)
        args = {k: v for k, v in inputs.items() if k not in RESERVED_KEYWORDS}
        signature = inspect.signature(func, eval_str=True)
        signature.bind(**args)  # TypeError: an unknown or missing argument
        named = {p.name for p in signature.parameters.values() if p.kind != p.VAR_KEYWORD}
        assert set(args) <= named, f"{fqn}: {set(args) - named} would go to **kwargs unchecked"
        for ref in placeholders(args):
            step_id, _, key = ref.partition(".")
            assert ref.startswith("$") or key in outputs.get(step_id, ()), f"{fqn}: {{{{ {ref} }}}}"
        if "id" in inputs:
            outputs[inputs["id"]] = set(signature.return_annotation.__annotations__)
    assert set(outputs) == {"build-image"}
    # the deployments' job variables: known to the Docker worker; the image is the one this deploy built
    known = DockerWorker.get_default_base_job_template()["variables"]["properties"]
    for deployment in spec["deployments"]:
        job_variables = deployment["work_pool"]["job_variables"]
        assert set(job_variables) <= set(known) and job_variables["image"] == "{{ build-image.image }}"


def test_docker_deployments_are_those_of_prefect_yaml():
    """Same deployments as prefect.yaml, only on the Docker pool; the runs start in the image's final WORKDIR."""
    docker, local = project(DOCKER_FILE), project()
    assert docker["prefect-version"] == local["prefect-version"]
    assert [d["name"] for d in docker["deployments"]] == [d["name"] for d in local["deployments"]]
    for ours, theirs in zip(docker["deployments"], local["deployments"], strict=True):
        assert ours["work_pool"]["name"] == "pipelines-docker"
        ours, theirs = ({k: v for k, v in d.items() if k != "work_pool"} for d in (ours, theirs))
        assert ours == theirs
    workdirs = [args for op, args in dockerfile() if op == "WORKDIR"]
    pull = {"prefect.deployments.steps.set_working_directory": {"directory": workdirs[-1]}}
    assert docker["pull"] == [pull]


def test_dockerfile_installs_the_package_from_its_context(tmp_path):
    """Rebuild the image's source folder from the build context as the Dockerfile's COPY lines do, run its
    install command's equivalent (a wheel, installed into a folder), and import every deployment's flow from
    there, in a directory that is not the checkout."""
    ops = dockerfile()
    assert ops[0] == ("FROM", "python:3.11-slim")
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(args for op, args in ops if op == "ENV")))
    project_settings = tomllib.loads((ROOT / "prefect.toml").read_text())
    assert project_settings["server"]["analytics_enabled"] is False
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"  # prefect.toml is not read in the container
    user = [i for i, (op, _) in enumerate(ops) if op == "USER"]
    assert user and ops[user[-1]][1] not in ("root", "0")
    install = [i for i, (op, args) in enumerate(ops) if op == "RUN" and "pip install" in args]
    assert len(install) == 1 and install[0] < user[-1]
    command = ops[install[0]][1]
    assert re.search(r"pip install \.(\s|$)", command) and "-e" not in command.split() and "[" not in command

    context = build_context()
    src = tmp_path / "src"
    workdir = None
    for op, args in ops[: install[0]]:
        if op == "WORKDIR":
            workdir = args
        elif op == "COPY":
            *sources, dest = args.split()
            assert dest in ("./", ".") or dest.endswith("/"), args
            for source in sources:
                source = source.rstrip("/")
                copied = [f for f in context if f == source or f.startswith(source + "/")]
                assert copied, f"COPY {source}: not in the build context (missing, or in .dockerignore)"
                for f in copied:  # a file lands in the folder `dest`, a folder's content in `dest`
                    target = src / dest / (Path(f).name if f == source else Path(f).relative_to(source))
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ROOT / f, target)
    assert workdir and "rm -rf " + workdir in command  # pip installs the folder the files were copied to

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    expected = {p for p in find_namespace_packages(ROOT, include=patterns["include"]) if "." not in p}
    assert {p.name for p in src.iterdir() if p.is_dir()} == expected  # every package of the project, no more

    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    built = subprocess.run([*pip, "wheel", "--no-deps", "-w", wheels, src], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", site, *wheels.glob("*.whl")], check=True)
    entrypoints = [d["entrypoint"] for d in project(DOCKER_FILE)["deployments"]]
    check = (
        "import sys, inspect\n"
        "from prefect.flows import load_flow_from_entrypoint\n"
        "for entrypoint in sys.argv[1:]:\n"
        "    print(inspect.getfile(load_flow_from_entrypoint(entrypoint, use_placeholder_flow=False).fn))\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", check, *entrypoints],
        cwd=elsewhere,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = out.stdout.split()
    assert len(loaded) == len(entrypoints) and all(Path(f).is_relative_to(site) for f in loaded), loaded


async def test_docker_deployments_deploy_to_a_docker_pool(prefect_harness, tmp_path):
    """deploy/docker.prefect.yaml on a real server with a Docker pool, the build and push steps left out (no
    Docker daemon here) and a fixed image instead: the server accepts the job variables and stores the pull
    step and the module entrypoints. Deployment names get a suffix, not to replace test_deploy_all's."""
    spec = project(DOCKER_FILE)
    spec["build"], spec["push"] = [], []
    for deployment in spec["deployments"]:
        deployment["name"] += "-docker-check"
        deployment["work_pool"]["job_variables"]["image"] = "registry.example.com/pipelines:check"
    variant = tmp_path / "docker.prefect.yaml"
    variant.write_text(yaml.safe_dump(spec, sort_keys=False))
    pool = prefect_cli("work-pool", "create", "pipelines-docker", "--type", "docker", "--overwrite")
    assert pool.returncode == 0, pool.stdout[-3000:] + pool.stderr[-3000:]
    out = prefect_cli("--no-prompt", "deploy", "--all", "--prefect-file", str(variant))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    async with get_client() as client:
        stored = {d.name: d for d in await client.read_deployments()}
    for deployment in spec["deployments"]:
        found = stored[deployment["name"]]
        assert found.work_pool_name == "pipelines-docker" and found.entrypoint == deployment["entrypoint"]
        assert found.job_variables == deployment["work_pool"]["job_variables"]
        assert found.pull_steps == spec["pull"]
        assert found.parameter_openapi_schema["properties"]
