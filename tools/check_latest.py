"""Run the test suite on the newest releases and say which upgraded package broke which test.

    tools/check-latest.sh                 # report only
    tools/check-latest.sh --write-lock    # also rewrite constraints.txt when the whole suite passes

1. A throwaway virtual environment gets the newest releases the registry resolves for the
   dependencies of pyproject.toml, with their upper caps lifted (a cap is what this checks).
2. Every package whose version differs from constraints.txt (the tested lock) is listed, and
   every direct dependency whose newest release the resolver could not install with the rest.
3. The default suite runs there. For each failing test, each upgraded package is put back to its
   locked version alone (``--no-deps``) and the failing tests rerun: the packages whose return
   fixes a test are named for it. A test no single return fixes is reported as such.

Needs only the Python standard library, the registry and this checkout; the work tree is not
touched (except constraints.txt with ``--write-lock``). Exit status: 0 when the suite passes on
the newest releases, 1 when it does not, 2 when they cannot be installed.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "constraints.txt"
# Installed without their dependencies (their metadata pins an old torch; see README's set-up).
NO_DEPS = ("facenet-pytorch", "brisque")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(.*)$")
_SUMMARY = re.compile(r"^(FAILED|ERROR) (\S+)")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def uncapped(requirement: str) -> str:
    """``requirement`` without upper bounds or pins (``<``, ``<=``, ``==``; ``~=X`` becomes ``>=X``)."""
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"cannot parse requirement {requirement!r}")
    name, extras, rest = match.group(1), match.group(2) or "", match.group(3).split(";")[0]
    kept = []
    for spec in (part.strip() for part in rest.split(",") if part.strip()):
        if spec.startswith("~="):
            kept.append(">=" + spec[2:].strip())
        elif spec.startswith((">=", ">", "!=")):
            kept.append(spec)
    return name + extras + ",".join(kept)


def installed_extras() -> list[str]:
    """The extras the CI command installs (``-e ".[test,...]"`` in .ci/run, README's test command)."""
    match = re.search(r'-e "\.\[([^\]]+)\]"', (ROOT / ".ci" / "run").read_text())
    return match.group(1).split(",") if match else ["test"]


def requirements() -> tuple[list[str], set[str]]:
    """The project's dependencies and the extras CI installs, uncapped, and the names of the direct ones."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    declared = list(project["dependencies"]) + [r for name in installed_extras() for r in extras.get(name, [])]
    direct = {normalize(_NAME.match(r).group(1)) for r in declared} | {normalize(n) for n in NO_DEPS}
    return [uncapped(r) for r in declared], direct


def read_versions(text: str) -> dict[str, str]:
    versions = {}
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            versions[normalize(name)] = version.strip()
    return versions


def run(command: list[str], *, log: Path | None = None, cwd: Path = ROOT, check: bool = True) -> str:
    """Run ``command``; its output goes to ``log`` (appended) and is returned."""
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    output = result.stdout + result.stderr
    if log is not None:
        with log.open("a") as handle:
            handle.write(f"$ {' '.join(command)}\n{output}\n")
    if check and result.returncode != 0:
        tail = "\n".join(output.splitlines()[-30:])
        raise RuntimeError(f"`{' '.join(command[:4])} ...` failed (exit {result.returncode}):\n{tail}")
    return output


def freeze(python: Path) -> str:
    """``pip freeze`` of the environment, setuptools included (torch needs it), pip and the project left out."""
    output = run([str(python), "-m", "pip", "freeze", "--all", "--exclude-editable"])
    lines = [line for line in output.splitlines() if line and not line.startswith(("#", "pip=="))]
    return "\n".join(lines) + "\n"


def held_back(python: Path, names: list[str], installed: dict[str, str]) -> dict[str, str]:
    """Packages whose newest release on the index is not the installed one: name -> newest."""
    newest = {}
    for name in names:
        output = run([str(python), "-m", "pip", "index", "versions", name], check=False)
        match = re.search(r"^\S+ \(([^)]+)\)", output, re.MULTILINE)
        if match and match.group(1) != installed[name]:
            newest[name] = match.group(1)
    return newest


def failing_tests(output: str) -> list[str]:
    return sorted({m.group(2) for line in output.splitlines() if (m := _SUMMARY.match(line))})


def pytest(python: Path, args: list[str], log: Path) -> tuple[int, list[str], str]:
    """Run pytest; returns its exit status, the failing test ids and its summary line."""
    command = [str(python), "-m", "pytest", "-q", "-rfE", "--tb=no", "-p", "no:cacheprovider", *args]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    output = result.stdout + result.stderr
    with log.open("a") as handle:
        handle.write(f"$ {' '.join(command)}\n{output}\n")
    counts = re.compile(r"\d+ (passed|failed|errors?|deselected)")
    summary = next((line for line in reversed(output.splitlines()) if counts.search(line)), output[-2000:])
    return result.returncode, failing_tests(output), summary.strip("= ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", type=Path, help="build the environment here (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the environment and its logs")
    parser.add_argument("--write-lock", action="store_true", help="rewrite constraints.txt if the suite passes")
    parser.add_argument("--pytest-args", default="", help="extra pytest arguments (e.g. '-x tests/test_cli.py')")
    args = parser.parse_args(argv)

    work = args.venv or Path(tempfile.mkdtemp(prefix="lightning-cat-latest-"))
    log = work.parent / f"{work.name}.log"
    python = work / "bin" / "python"
    started = time.time()
    print(f"check-latest: environment {work}, log {log}", flush=True)
    try:
        reqs, direct = requirements()
        if not python.exists():
            run([sys.executable, "-m", "venv", str(work)], log=log)
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
        try:
            run(pip + ["--upgrade", *reqs], log=log)
            run(pip + ["--upgrade", "--no-deps", *NO_DEPS], log=log)
            run(pip + ["--no-deps", "-e", "."], log=log)
        except RuntimeError as error:
            print(f"check-latest: the newest releases do not install together:\n{error}")
            return 2
        caps = run([str(python), "-m", "pip", "config", "list"], check=False)
        if "constraint" in caps:
            print("check-latest: note: pip on this machine applies a constraint file (pip config list):")
            print("  " + "\n  ".join(line for line in caps.splitlines() if "constraint" in line))

        latest = read_versions(freeze(python))
        locked = read_versions(LOCK.read_text())
        changed = {n: (locked[n], v) for n, v in latest.items() if n in locked and locked[n] != v}
        added = sorted(set(latest) - set(locked))
        print(f"\n{len(changed)} package(s) newer than the lock:")
        for name, (old, new) in sorted(changed.items(), key=lambda item: (item[0] not in direct, item[0])):
            print(f"  {name:28s} {old:>14s} -> {new}{'' if name in direct else '   (indirect)'}")
        if added:
            print("  new in the environment: " + ", ".join(f"{n}=={latest[n]}" for n in added))
        held = held_back(python, sorted(direct & set(latest)), latest)
        if held:
            print("releases newer than what the resolver installed (they do not install together with the rest):")
            for name, newest in held.items():
                print(f"  {name:28s} {latest[name]:>14s}, newest {newest}")

        print("\nrunning the default test suite on the newest releases ...", flush=True)
        status, failing, summary = pytest(python, args.pytest_args.split(), log)
        print(f"  {summary}")
        if status != 0 and not failing:
            print(f"\nthe suite did not run to the end (pytest exit status {status}); see {log}")
            return 1
        if status == 0:
            print("\nthe suite passes on the newest releases")
            if args.write_lock:
                header = [line for line in LOCK.read_text().splitlines() if line.startswith("#")]
                LOCK.write_text("\n".join(header + freeze(python).splitlines()) + "\n")
                print(f"wrote {LOCK.relative_to(ROOT)}: commit it, and lift the caps it no longer needs")
            return 0

        print(f"\n{len(failing)} test(s) fail on the newest releases; putting each upgraded package back alone:")
        fixed_by: dict[str, list[str]] = {test: [] for test in failing}
        for name, (old, new) in sorted(changed.items(), key=lambda item: (item[0] not in direct, item[0])):
            run(pip + ["--no-deps", f"{name}=={old}"], log=log)
            _, still, _ = pytest(python, failing, log)
            run(pip + ["--no-deps", f"{name}=={new}"], log=log)
            fixed = [test for test in failing if test not in still]
            for test in fixed:
                fixed_by[test].append(f"{name} {new} (locked {old})")
            print(f"  {name} {new} -> {old}: fixes {len(fixed)} of {len(failing)}", flush=True)

        print("\nwhat broke what:")
        for test in failing:
            culprits = fixed_by[test]
            print(
                f"  {test}\n      "
                + ("broken by " + "; ".join(culprits) if culprits else "no single package's return fixes it")
            )
        return 1
    finally:
        print(f"\ncheck-latest: {time.time() - started:.0f} s", flush=True)
        if not args.keep and args.venv is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
