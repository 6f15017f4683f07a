"""What the package declares and what its image is built from, checked without a Docker engine.

* pyproject.toml declares every third-party package the code imports, in the install or the extra
  jellybean/extras.py says (the table the user's "install this extra" errors come from), and the
  planning layers import only what every install has;
* the Dockerfile passes hadolint (a real Dockerfile parser and linter) and says what the project
  pins: FROM the Ray image of the Ray version pyproject.toml allows, torch as pinned, this version
  of Jellybean with its runtime and k8s extras, a user that is not root, the package's console
  script as entrypoint (the Helm chart's side: tests/k8s/test_chart.py);
* the wheel the image installs builds from exactly the context .dockerignore lets Docker send.

Building and running the image needs a Docker engine, which the machines running these tests do not
have: that the image starts is checked at build time (the Dockerfile runs ``jellybean --help``).
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from jellybean.extras import PACKAGES

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]
#: The parts `pip install jellybean` (no extra) must run: documents, planning, importers, generators.
CORE_PACKAGES = ("spec", "optimizer", "importers", "generate")


def requirements(extra: str | None) -> dict[str, Requirement]:
    """The requirements of the install (None) or of an extra, by canonical distribution name."""
    listed = PROJECT["dependencies"] if extra is None else PROJECT["optional-dependencies"][extra]
    return {canonicalize_name(r.name): r for r in map(Requirement, listed)}


def third_party_imports(folder: Path) -> dict[str, set[str]]:
    """Top-level names of the modules imported anywhere (lazily too) in ``folder``'s Python files
    that are neither the standard library nor jellybean, each with the files importing it."""
    found: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("jellybean", "__future__"):
                    found.setdefault(top, set()).add(str(path.relative_to(folder.parent)))
    return found


def test_the_scan_finds_imports_lazy_ones_included(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("import os\nimport yaml\n\ndef f():\n    from matplotlib.figure import Figure\n"
                                   "    import jellybean.spec\n    from . import sibling\n")
    assert set(third_party_imports(tmp_path)) == {"yaml", "matplotlib"}


def test_every_third_party_import_is_declared_where_extras_py_says() -> None:
    imported = third_party_imports(ROOT / "jellybean")
    assert {"ray", "fastapi", "uvicorn", "matplotlib", "torch"} <= set(imported)  # the scan sees lazy imports
    unknown = {name: sorted(files) for name, files in imported.items() if name not in PACKAGES}
    assert not unknown, f"imported but not in jellybean.extras.PACKAGES (add it, and declare it): {unknown}"
    for module, (distribution, extra) in PACKAGES.items():
        declared = requirements(extra)
        assert canonicalize_name(distribution) in declared, (
            f"{module}: {distribution} is not declared in pyproject.toml's "
            + ("dependencies" if extra is None else f"'{extra}' extra"))


def test_each_extra_declares_only_what_extras_py_knows() -> None:
    """PACKAGES is the one table: a package declared in an extra (or the install) is in it, for that extra."""
    known = {(canonicalize_name(dist), extra) for dist, extra in PACKAGES.values()}
    for extra in (None, "runtime", "k8s", "viz"):
        for name in requirements(extra):
            if name == "jellybean":
                continue  # an extra that brings another (k8s brings runtime)
            assert (name, extra) in known, f"{name} is declared in {extra or 'dependencies'} but not in PACKAGES"


def test_the_planning_layers_import_only_what_every_install_has() -> None:
    core = {module for module, (_, extra) in PACKAGES.items() if extra is None}
    for package in CORE_PACKAGES:
        extra_needed = {name: sorted(files) for name, files in third_party_imports(ROOT / "jellybean" / package).items()
                        if name not in core}
        assert not extra_needed, f"jellybean.{package} needs an extra: {extra_needed}"


def test_matplotlib_is_only_in_the_viz_extra_and_torch_stays_pinned() -> None:
    holders = [extra for extra in (None, *PROJECT["optional-dependencies"]) if "matplotlib" in requirements(extra)]
    assert holders == ["viz"]
    torch = requirements("runtime")["torch"]
    assert str(torch.specifier) == "==2.13.0"  # a looser pin pulls a multi-GB CUDA build
    assert requirements("k8s")["jellybean"].extras == {"runtime"}  # the operator serves


# --- the Dockerfile ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    return DockerfileParser(path=str(ROOT / "Dockerfile"))


def hadolint(dockerfile: Path) -> tuple[int, list[dict]]:
    """hadolint's exit code and findings (it fails at its default threshold: any finding at all)."""
    binary = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([binary, "--no-color", "--format", "json", str(dockerfile)], capture_output=True,
                            text=True, timeout=60)
    return result.returncode, json.loads(result.stdout or "[]")


def test_hadolint_finds_nothing() -> None:
    assert hadolint(ROOT / "Dockerfile") == (0, [])


def test_hadolint_refuses_what_the_dockerfile_must_not_do(tmp_path: Path) -> None:
    """The check above can fail: an unpinned pip install that caches, a root user, and a file that
    does not parse are findings."""
    broken = tmp_path / "Dockerfile"
    broken.write_text("FROM rayproject/ray:2.60.0-py311-cpu\nRUN pip install jellybean\nUSER root\n")
    code, findings = hadolint(broken)
    assert code != 0 and {"DL3013", "DL3042", "DL3002"} <= {f["code"] for f in findings}, findings
    broken.write_text("FROM rayproject/ray:2.60.0-py311-cpu\nINSTALL jellybean\n")
    code, findings = hadolint(broken)
    assert code != 0 and [(f["code"], f["line"]) for f in findings] == [("DL1000", 2)], findings


def instructions(dockerfile: DockerfileParser, name: str) -> list[str]:
    return [i["value"] for i in dockerfile.structure if i["instruction"] == name]


def test_the_image_is_rays_image_of_the_ray_version_pyproject_allows(dockerfile: DockerfileParser) -> None:
    ray_version = dockerfile.args["RAY_VERSION"]
    ray = requirements("runtime")["ray"]
    assert "serve" in ray.extras and ray.specifier.contains(ray_version), (ray_version, str(ray))
    python = re.fullmatch(r"py3(\d+)", dockerfile.baseimage.split(":")[1].split("-")[1]).group(1)
    assert Version(f"3.{python}") in SpecifierSet(PROJECT["requires-python"])
    for line in instructions(dockerfile, "FROM"):  # both stages, the wheel's and the image's
        image = line.split()[0]
        assert image == "rayproject/ray:${RAY_VERSION}-py3" + python + "-cpu", line
    assert dockerfile.baseimage == f"rayproject/ray:{ray_version}-py3{python}-cpu"


def test_the_install_keeps_rays_version_pins_torch_and_installs_this_jellybean(dockerfile: DockerfileParser) -> None:
    (install,) = [run for run in instructions(dockerfile, "RUN") if "pip install" in run]
    assert '"ray[serve]==${RAY_VERSION}"' in install  # pip must not replace the image's Ray
    assert f'"torch{requirements("runtime")["torch"].specifier}"' in install
    assert dockerfile.args["JELLYBEAN_VERSION"] == PROJECT["version"] == dockerfile.labels[
        "org.opencontainers.image.version"]
    assert '"/tmp/wheels/jellybean-${JELLYBEAN_VERSION}-py3-none-any.whl[runtime,k8s]"' in install
    assert dockerfile.labels["org.opencontainers.image.title"] == PROJECT["name"]


def test_it_runs_as_a_user_that_is_not_root(dockerfile: DockerfileParser) -> None:
    users = instructions(dockerfile, "USER")
    assert users, "the image must say its user (the last USER is the one that runs)"
    user, _, group = users[-1].partition(":")
    assert user not in ("root", "0") and user.isdigit() and int(user) > 0  # numeric: runAsNonRoot can verify it
    assert group != "0"


def test_the_entrypoint_is_the_packages_console_script(dockerfile: DockerfileParser) -> None:
    (entrypoint,) = instructions(dockerfile, "ENTRYPOINT")
    command = json.loads(entrypoint)  # exec form: signals reach jellybean, not a shell
    assert command == ["jellybean"]
    target = PROJECT["scripts"][command[0]]
    module, _, function = target.partition(":")
    assert callable(getattr(importlib.import_module(module), function))
    (cmd,) = instructions(dockerfile, "CMD")
    assert json.loads(cmd) == ["--help"]


def docker_context(root: Path) -> list[str]:
    """The files Docker sends as the build context of ``root``: what its .dockerignore keeps, read
    the way the Docker SDK reads it and matched by the SDK's own implementation of the rules."""
    from docker.utils.build import exclude_paths

    lines = (root / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    return sorted(p for p in exclude_paths(str(root), patterns, dockerfile="Dockerfile") if (root / p).is_file())


def test_the_wheel_the_image_installs_builds_from_the_docker_context(tmp_path: Path) -> None:
    kept = docker_context(ROOT)
    assert "pyproject.toml" in kept and "jellybean/cli/__init__.py" in kept
    assert not [p for p in kept if p.startswith(("tests/", "bench/", ".git/", ".venv/")) or "__pycache__" in p]
    context = tmp_path / "context"
    for relative in kept:
        (context / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, context / relative)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--wheel-dir", str(wheels), str(context)],
                   check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = wheels.iterdir()
    assert wheel.name == f"jellybean-{PROJECT['version']}-py3-none-any.whl"  # the name the Dockerfile installs
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        extras = set(re.findall(r"^Provides-Extra: (\S+)$", archive.read(metadata).decode(), re.M))
    assert "[console_scripts]\njellybean = jellybean.cli:main" in scripts
    assert {"runtime", "k8s", "viz"} <= extras
    assert "jellybean/data/vehicle-tracking-zoo.yaml" in names  # package data travels too
    assert not [n for n in names if n.startswith("tests/")]
