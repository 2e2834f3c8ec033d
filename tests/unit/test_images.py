"""The user images (images/): pinned requirements, the CPU pins being the ones this
environment runs (one source of truth), the GPU image agreeing with them, and what the
Containerfiles and Apptainer definitions say.

There is no container engine here (no Docker, Podman or Apptainer), so the images are not
built by the tests: their files are read and checked instead.
"""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
KINDS = ("base", "gpu")


def pins(kind: str) -> dict[str, str]:
    """name -> version of images/KIND/requirements.txt; every line must be `name==version`."""
    out = {}
    for line in (IMAGES / kind / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        spec = list(req.specifier)
        assert len(spec) == 1 and spec[0].operator == "==", f"{kind}: {line!r} is not pinned"
        out[canonicalize_name(req.name)] = spec[0].version
    return out


def test_both_images_pin_every_package_and_agree_where_they_share():
    base, gpu = pins("base"), pins("gpu")
    assert base["torch"] == "2.13.0"
    shared = base.keys() & gpu.keys()
    assert {"torch", "numpy", "matplotlib", "ipykernel", "nbgitpuller"} <= shared
    differ = {n: (base[n], gpu[n]) for n in shared if base[n] != gpu[n]}
    assert not differ, f"images/gpu pins other versions than images/base: {differ}"
    assert set(gpu) - set(base) == {"nvidia-ml-py"}


def test_this_environment_runs_the_cpu_pins():
    """`make install` installs images/base/requirements.txt: the tests use those versions."""
    wrong = {}
    for name, pinned in pins("base").items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = None
        if installed is None or installed.split("+")[0] != pinned:  # torch: 2.13.0+cpu
            wrong[name] = (pinned, installed)
    assert not wrong, f"pinned vs installed: {wrong} (run `make install`)"
    makefile = (ROOT / "Makefile").read_text()
    assert "USERENV := images/base/requirements.txt" in makefile
    assert "pip install -q -r $(USERENV)" in makefile


def test_pins_satisfy_the_workbenchs_own_requirements():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ranges = {canonicalize_name(Requirement(d).name): Requirement(d).specifier for d in deps}
    for kind in KINDS:
        for name, pinned in pins(kind).items():
            if name in ranges:
                assert ranges[name].contains(pinned), f"{kind}: {name}=={pinned} vs {ranges[name]}"


@pytest.mark.parametrize("kind", KINDS)
def test_containerfile_builds_the_workbench_on_the_pins(kind):
    text = (IMAGES / kind / "Containerfile").read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms == ["docker.io/library/node:20-bookworm-slim", "docker.io/library/debian:12-slim"]
    assert f"COPY images/{kind}/requirements.txt /tmp/requirements.txt" in text
    assert "-r /tmp/requirements.txt" in text
    # The workbench (jupyterhub-singleuser and the rest) and its Lab extension's wheel.
    assert "COPY pyproject.toml README.md /src/shangzhuang/" in text and "COPY src " in text
    assert "pip wheel --no-deps -w /wheels /build/shangzhuang-lab" in text
    assert "pip install --no-cache-dir /src/shangzhuang /wheels/*.whl" in text
    assert "COPY notebooks /opt/shangzhuang/notebooks" in text
    assert 'CMD ["jupyterhub-singleuser"]' in text
    cpu_index = "download.pytorch.org/whl/cpu" in text
    assert cpu_index == (kind == "base")  # the GPU image takes PyPI's CUDA build
    for path in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (ROOT / path).exists(), f"{kind}/Containerfile copies {path}, which is missing"


@pytest.mark.parametrize("kind", KINDS)
def test_apptainer_definition_matches(kind):
    text = (IMAGES / kind / "shangzhuang.def").read_text()
    assert re.findall(r"^From: (\S+)", text, re.M) == ["node:20-bookworm-slim", "debian:12-slim"]
    assert re.findall(r"^Bootstrap: (\S+)", text, re.M) == ["docker", "docker"]
    assert f"images/{kind}/requirements.txt /tmp/requirements.txt" in text
    assert "-r /tmp/requirements.txt" in text
    assert "pip install --no-cache-dir /src/shangzhuang /wheels/*.whl" in text
    assert '%runscript\n    exec jupyterhub-singleuser "$@"' in text
    assert ("--nv" in text) == (kind == "gpu")
    files = re.search(r"Stage: final\n\n%files\n(.*?)\n\n", text, re.S).group(1)
    for line in files.splitlines():
        assert (ROOT / line.split()[0]).exists(), f"{kind}/shangzhuang.def copies {line}"
