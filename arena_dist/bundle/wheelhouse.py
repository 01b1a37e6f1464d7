"""The bundle's wheelhouse: one wheel per runtime package, for the target's Python and platform, plus arena_dist.

pip does the downloading (`pip download --only-binary=:all: --no-deps --python-version ... --platform ...
--implementation ...`) and the building (`pip wheel` of this checkout); what is hand-written here is what pip has
no option for:

- the pin list. Every package comes with an exact `==` version (from requirements/runtime.txt, or for a direct
  dependency from requirements/constraints.txt); a line without one is refused. pip is not asked to resolve: a
  resolution for the target would pull torch (peft, accelerate and bitsandbytes require it) as a multi-GB CUDA
  wheel the target already has, and it would let every transitive version float with whatever the registry serves
  that day. The target keeps its own torch and torch's own dependencies (`provided_by_torch`).
- the closure check. After the download every wheel's own metadata (Requires-Dist, with its environment markers
  evaluated for the target's Python and machine) must be satisfied by another wheel of the wheelhouse (name and
  version) or by a package the target provides, so a missing backport for an older Python is a build-time error
  naming it, not an ImportError in the offline notebook.
- the manylinux expansion. `pip download --platform manylinux_2_35_x86_64` accepts only wheels tagged exactly so
  (pip expands the legacy manylinux2014 / manylinux2010 names only), while most wheels are tagged for an older
  glibc; every older manylinux tag of the same machine is passed too.

Choosing the target: run, in a notebook on the competition's image (the one the submission runs on),
`import sys, platform; print(sys.version_info[:2], platform.libc_ver(), platform.machine())`; e.g. (3, 11)
('glibc', '2.35') x86_64 gives `python_version: "3.11"`, `platform: manylinux_2_35_x86_64`. `target: local` uses
this interpreter's own Python and platform (tests, or a build on the image itself).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from email.parser import Parser
from pathlib import Path

from arena_dist.errors import ConfigError, InputError

LINUX_PLATFORM = re.compile(r"^(?:manylinux_(\d+)_(\d+)|manylinux(2014|2010|1)|linux)_([a-z0-9_]+)$")
# The legacy manylinux names and the glibc they stand for (PEP 600).
LEGACY_MANYLINUX = {"2014": (2, 17), "2010": (2, 12), "1": (2, 5)}
OLDEST_GLIBC_MINOR = 5  # manylinux1
# Files of the checkout that building the arena_dist wheel reads (setup.cfg reads the README).
PROJECT_FILES = ("pyproject.toml", "setup.cfg", "setup.py", "MANIFEST.in", "README.md", "LICENSE")


@dataclass(frozen=True)
class TargetSpec:
    """The interpreter the wheels are for. `python_version` None: this interpreter (`target: local`)."""

    python_version: str | None = None  # "3.11"
    platform: str | None = None  # "manylinux_2_35_x86_64"
    implementation: str = "cp"
    provided: tuple[str, ...] = ()  # runtime packages the target image already has: left out of the wheelhouse

    @property
    def local(self) -> bool:
        return self.python_version is None

    def platforms(self) -> list[str]:
        """The platform tags the wheels may carry: the given one and every older manylinux of the same machine."""
        if self.local:
            from packaging.tags import sys_tags

            return list(dict.fromkeys(tag.platform for tag in sys_tags()))
        return manylinux_platforms(self.platform)

    def pip_args(self) -> list[str]:
        if self.local:
            return []  # pip's default: the running interpreter
        args = ["--python-version", self.python_version, "--implementation", self.implementation]
        for platform in self.platforms():
            args += ["--platform", platform]
        return args

    def marker_environment(self) -> dict[str, str]:
        """PEP 508 marker values of the target (all of them for a local target)."""
        from packaging.markers import default_environment

        env = default_environment()
        if self.local:
            return env
        machine = LINUX_PLATFORM.match(self.platform).group(4)
        # The patch release is not part of the target; markers on it (rare) are read as for x.y.0.
        env.update(python_version=self.python_version, python_full_version=f"{self.python_version}.0",
                   implementation_version=f"{self.python_version}.0", platform_machine=machine,
                   sys_platform="linux", platform_system="Linux", os_name="posix",
                   implementation_name="cpython", platform_python_implementation="CPython")
        return env

    def describe(self) -> dict:
        """For the manifest: what the wheelhouse was resolved for."""
        if self.local:
            from packaging.tags import sys_tags

            tag = next(iter(sys_tags()))
            platforms = self.platforms()
            platform = next((p for p in platforms if p.startswith("manylinux")), platforms[0])  # the portable name
            return {"python_version": f"{sys.version_info.major}.{sys.version_info.minor}", "platform": platform,
                    "implementation": tag.interpreter[:2], "abi": tag.abi, "local": True,
                    "provided": sorted(self.provided)}
        abi = self.implementation + self.python_version.replace(".", "")
        return {"python_version": self.python_version, "platform": self.platform,
                "implementation": self.implementation, "abi": abi, "local": False, "platforms": self.platforms(),
                "provided": sorted(self.provided)}


def manylinux_platforms(platform: str) -> list[str]:
    """`manylinux_2_35_x86_64` -> itself, manylinux_2_34_x86_64, ..., manylinux_2_5_x86_64 and the legacy names
    manylinux2014 / 2010 / 1 of that machine (those stand for glibc 2.17 / 2.12 / 2.5). `linux_<machine>` (wheels
    built on and for one machine) is kept as given."""
    match = LINUX_PLATFORM.match(platform or "")
    if not match:
        raise ConfigError(f"target.platform {platform!r}: expected a Linux platform tag such as "
                          "manylinux_2_35_x86_64 (see `pip debug --verbose` on the target)")
    major, minor, legacy, machine = match.groups()
    if legacy is None and major is None:
        return [platform]
    glibc = LEGACY_MANYLINUX[legacy] if legacy else (int(major), int(minor))
    tags = [f"manylinux_{glibc[0]}_{m}_{machine}" for m in range(glibc[1], OLDEST_GLIBC_MINOR - 1, -1)]
    tags += [f"manylinux{name}_{machine}" for name, (_, m) in LEGACY_MANYLINUX.items() if m <= glibc[1]]
    return [platform, *[tag for tag in tags if tag != platform]]


# --------------------------------------------------------------------------------------------------------- pins
@dataclass
class Pin:
    name: str  # canonical
    version: str
    extras: tuple[str, ...] = ()

    def requirement(self) -> str:
        extras = f"[{','.join(self.extras)}]" if self.extras else ""
        return f"{self.name}{extras}=={self.version}"


def _requirement_lines(path: Path):
    """(line number, Requirement) for each requirement of a plain requirements file (no pip options)."""
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise InputError(f"{path}: requirements file missing") from None
    for number, raw in enumerate(lines, 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        try:
            yield number, Requirement(line)
        except InvalidRequirement as err:
            raise InputError(f"{path}:{number}: {line!r} is not a plain requirement ({err})") from None


def _exact_version(requirement) -> str | None:
    specs = list(requirement.specifier)
    if len(specs) == 1 and specs[0].operator in ("==", "===") and "*" not in specs[0].version:
        return specs[0].version
    return None


def pinned_requirements(runtime: Path, constraints: Path, target: TargetSpec) -> list[Pin]:
    """Every runtime requirement that applies to the target (markers), with its exact version: its own `==` or the
    constraints file's. A package without one, or with two different ones, is an error naming the file and line."""
    from packaging.utils import canonicalize_name

    constrained = {canonicalize_name(req.name): (_exact_version(req), number)
                   for number, req in _requirement_lines(constraints)}
    env = target.marker_environment()
    pins: dict[str, Pin] = {}
    for number, req in _requirement_lines(runtime):
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        own = _exact_version(req)
        if req.specifier and own is None:
            raise ConfigError(f"{runtime}:{number}: {req.name} must be pinned with == (got {req.specifier})")
        pinned, where = constrained.get(name, (None, None))
        if own and pinned and own != pinned:
            raise ConfigError(f"{runtime}:{number}: {req.name}=={own} but {constraints}:{where} pins {pinned}")
        version = own or pinned
        if version is None:
            raise ConfigError(f"{runtime}:{number}: {req.name} has no exact version (== here or in {constraints}); "
                              "the wheelhouse would hold whatever the registry serves as newest")
        if name in pins:
            raise ConfigError(f"{runtime}:{number}: {req.name} is listed twice")
        pins[name] = Pin(name, version, tuple(sorted(req.extras)))
    return list(pins.values())


def provided_by_torch(target: TargetSpec) -> set[str]:
    """torch and the packages its installation brings (its Requires-Dist closure, read from the torch installed
    here, markers evaluated for the target): the target has its own torch, so none of these is in the wheelhouse."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    env = target.marker_environment()
    provided, queue = set(), ["torch"]
    while queue:
        name = canonicalize_name(queue.pop())
        if name in provided:
            continue
        provided.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # not installed here (a CUDA-only dependency): its name is all the target check needs
        for raw in requires:
            req = Requirement(raw)
            if req.marker is None or req.marker.evaluate({**env, "extra": ""}):
                queue.append(req.name)
    return provided


# ---------------------------------------------------------------------------------------------------- pip calls
def _pip_reason(tail: list[str]) -> str:
    """The line of pip's output that says why it failed, without its list of every version there is."""
    errors = [line.removeprefix("ERROR: ") for line in tail if line.startswith("ERROR:")]
    reason = next((line for line in errors if "No matching distribution" in line), errors[-1] if errors else "")
    reason = re.sub(r" \(from versions: [^)]*\)", "", reason or " | ".join(tail[-2:]))
    return reason if len(reason) <= 400 else reason[:400] + "..."


def _run_pip(args: list[str], what: str, prefix: str | None, hint: str = "") -> None:
    """`python -m pip ARGS`, its output shown line by line after `prefix` (None: kept quiet unless pip fails); a
    failure is an InputError saying why, from pip's last lines."""
    command = [sys.executable, "-m", "pip", *args]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    tail: list[str] = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                if prefix is not None:
                    print(f"{prefix}{line}", flush=True)
                tail = (tail + [line])[-8:]
    if proc.returncode != 0:
        raise InputError(f"{what} failed: {_pip_reason(tail)}{hint}")


def download_wheels(pins: list[Pin], target: TargetSpec, directory: Path) -> None:
    """`pip download` of exactly these pins (binary wheels only, no dependency resolution) into `directory`. pip's
    own configuration (index, find-links, proxy) applies: the build needs a package index, the target does not."""
    described = target.describe()
    what = f"pip download for the target (Python {described['python_version']}, {described['platform']})"
    hint = (" (a pinned version may have no wheel for this target; the pins are in requirements/runtime.txt and "
            "requirements/constraints.txt)")
    args = ["download", "--only-binary=:all:", "--no-deps", "--dest", str(directory), *target.pip_args(),
            *[pin.requirement() for pin in pins]]
    _run_pip(args, what, "bundle: pip: ", hint)


def checkout_root() -> Path:
    """The source checkout arena_dist runs from (its wheel is built from here)."""
    import arena_dist

    root = Path(arena_dist.__file__).resolve().parents[1]
    if not (root / "setup.cfg").is_file() or not (root / "requirements").is_dir():
        raise InputError(f"{root}: arena_dist is not running from a source checkout (setup.cfg and requirements/ "
                         "missing); `arena-dist bundle` builds the package's wheel from its checkout")
    return root


def build_project_wheel(root: Path, directory: Path) -> Path:
    """A wheel of arena_dist from the checkout at `root`, built from a copy of its sources (setuptools leaves
    build/ and *.egg-info next to the sources it builds) with the build tools installed here, so no index is needed."""
    with tempfile.TemporaryDirectory(prefix="arena-dist-wheel-") as tmp:
        source = Path(tmp) / "src"
        shutil.copytree(root / "arena_dist", source / "arena_dist",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for name in PROJECT_FILES:
            if (root / name).is_file():
                shutil.copy2(root / name, source / name)
        built = Path(tmp) / "wheel"
        _run_pip(["wheel", "--no-deps", "--no-build-isolation", "--no-index", "--quiet", "--wheel-dir", str(built),
                  str(source)], f"building the arena_dist wheel from {root}", None)
        (wheel,) = built.glob("arena_dist-*.whl")
        return Path(shutil.copy2(wheel, directory / wheel.name))


# ------------------------------------------------------------------------------------------------ closure check
@dataclass
class Wheel:
    path: Path
    name: str  # canonical
    version: str
    requires: list[str] = field(default_factory=list)


def read_wheel(path: Path) -> Wheel:
    """Name, version and Requires-Dist of a wheel file (its .dist-info/METADATA)."""
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    try:
        name, version, _, _ = parse_wheel_filename(path.name)
    except InvalidWheelFilename as err:
        raise InputError(f"{path}: not a wheel file name ({err})") from None
    with zipfile.ZipFile(path) as archive:
        metadata = next((n for n in archive.namelist()
                         if n.count("/") == 1 and n.endswith(".dist-info/METADATA")), None)
        if metadata is None:
            raise InputError(f"{path}: no .dist-info/METADATA in the wheel")
        message = Parser().parsestr(archive.read(metadata).decode("utf-8"))
    return Wheel(path, str(name), str(version), message.get_all("Requires-Dist") or [])


def closure_problems(wheels: list[Wheel], provided: set[str], target: TargetSpec,
                     skip: tuple[str, ...] = ("arena-dist",)) -> list[str]:
    """What the wheels need on the target and the wheelhouse lacks: a requirement (with its markers evaluated for
    the target, extras followed) that is neither a wheel of a fitting version nor a package the target provides.
    `skip`: wheels whose requirements are not needed at run time (arena_dist's are the training install's)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    env = target.marker_environment()
    by_name = {wheel.name: wheel for wheel in wheels}
    problems: list[str] = []
    queue = [(wheel.name, "") for wheel in wheels if wheel.name not in skip]
    seen = set()
    while queue:
        name, extra = queue.pop()
        if (name, extra) in seen or name not in by_name:
            continue
        seen.add((name, extra))
        wheel = by_name[name]
        for raw in wheel.requires:
            req = Requirement(raw)
            if req.marker is not None and not req.marker.evaluate({**env, "extra": extra}):
                continue
            if extra and (req.marker is None or "extra" not in str(req.marker)):
                continue  # already checked with the wheel's base requirements
            needed = canonicalize_name(req.name)
            owner = f"{wheel.name} {wheel.version}" + (f" [{extra}]" if extra else "")
            if needed in by_name:
                if not req.specifier.contains(by_name[needed].version, prereleases=True):
                    problems.append(f"{owner} needs {req.name}{req.specifier}, the wheelhouse has "
                                    f"{by_name[needed].version}")
                queue += [(needed, e) for e in req.extras]
            elif needed not in provided:
                problems.append(f"{owner} needs {req}")
    return sorted(set(problems))


def check_closure(directory: Path, provided: set[str], target: TargetSpec) -> list[Wheel]:
    wheels = [read_wheel(path) for path in sorted(directory.glob("*.whl"))]
    problems = closure_problems(wheels, provided, target)
    if problems:
        described = target.describe()
        raise InputError(f"the wheelhouse for Python {described['python_version']} on {described['platform']} "
                         f"misses what its wheels need: {'; '.join(problems)}; add them, pinned, to "
                         "requirements/runtime.txt (or to target.provided when the target image has them)")
    return wheels
