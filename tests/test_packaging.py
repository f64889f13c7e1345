"""Packaging: the wheel lists every subpackage; the lock pins every dependency; README, CI and the code agree."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping = {name: Path(folder) for name, folder in config["package-dir"].items()}
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "lightning_cat").rglob("__init__.py")}
    for name, folder in mapping.items():
        found |= {
            name + "".join("." + part for part in p.parent.relative_to(ROOT / folder).parts)
            for p in (ROOT / folder).rglob("__init__.py")
        }
    assert found == listed


def test_root_folders_are_not_top_level_packages():
    assert importlib.util.find_spec("lightning_cat.callbacks") is not None
    assert importlib.util.find_spec("lightning_cat.datamodules") is not None
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert not {"callbacks", "datamodules"} & set(config["packages"])


# ------------------------------------------------------------------------------ dependencies


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[_normalize(name)] = version
    return pins


def _installed_extras() -> list[str]:
    """The extras README's set-up commands install (``-e ".[test,...]"``)."""
    match = re.search(r'-e "\.\[([^\]]+)\]"', _setup_commands()[1])
    assert match, "README's test command installs the project with extras"
    return match.group(1).split(",")


def test_the_lock_pins_every_declared_dependency_within_its_bounds():
    from packaging.requirements import Requirement

    locked = _locked()
    extras = _project()["optional-dependencies"]
    declared = _project()["dependencies"] + [r for extra in _installed_extras() for r in extras[extra]]
    for text in declared:
        requirement = Requirement(text)
        name = _normalize(requirement.name)
        assert name in locked, f"constraints.txt does not pin {name}"
        assert requirement.specifier.contains(locked[name]), f"locked {name}=={locked[name]} is outside {text!r}"
    for name in ("facenet-pytorch", "brisque", "torch", "torchvision"):
        assert name in locked


def _setup_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Set up") :]
    block = section[section.index("```bash") + 7 : section.index("```", section.index("```bash") + 7)]
    return [line for line in block.splitlines() if line.startswith("python3 -m venv")]


def test_readme_and_ci_install_through_the_lock():
    commands = _setup_commands()
    assert len(commands) == 2
    for command in commands:
        installs = [part for part in command.split("&&") if "pip install" in part]
        assert installs and all("-c constraints.txt" in part for part in installs), command
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("python3 -m venv")]
    assert ci == [commands[1]], ".ci/run must run README's test command"


def _third_party_imports() -> set[str]:
    names = set()
    for folder in ("lightning_cat", "callbacks", "datamodules"):
        for file in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(file.read_text())):
                if isinstance(node, ast.Import):
                    names |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "lightning_cat"}


#: Import names that differ from the distribution providing them (and that the installed
#: metadata does not map): dlib comes from the prebuilt dlib-bin wheel.
_PROVIDED_BY = {"dlib": "dlib-bin"}


def test_every_imported_package_is_declared():
    from importlib.metadata import packages_distributions

    requirements = _project()["dependencies"] + [r for e in _project()["optional-dependencies"].values() for r in e]
    declared = {_normalize(re.match(r"[A-Za-z0-9._-]+", r).group(0)) for r in requirements}
    declared |= {"facenet-pytorch"}  # installed with --no-deps (README's set-up)
    distributions = packages_distributions()
    for module in sorted(_third_party_imports()):
        owners = {_normalize(d) for d in distributions.get(module, [])}
        owners |= {_normalize(_PROVIDED_BY.get(module, module))}  # an optional package not installed here
        assert owners & declared, (
            f"the code imports {module} (from {sorted(owners)}) but pyproject.toml does not declare it"
        )


def test_code_is_linted_and_formatted():
    ruff = [sys.executable, "-m", "ruff"]
    check = subprocess.run(ruff + ["check", "--quiet", "--no-cache", str(ROOT)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout[-3000:]
    fmt = subprocess.run(
        ruff + ["format", "--check", "--quiet", "--no-cache", str(ROOT)], capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stdout[-3000:]
