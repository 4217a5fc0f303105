"""The three ways to install (make, pip, conda) name the same packages and pins."""

from __future__ import annotations

import re

import nbformat
import pytest
import torch

from conftest import ROOT
from course_lib.machinery import device as course_device

KERNEL = "dlsys-perf"


def _name(requirement: str) -> str:
    return re.split(r"[\s;<>=!~\[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def pin_file() -> dict[str, list[str]]:
    pins: dict[str, list[str]] = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            pins.setdefault(_name(line), []).append(line)
    return pins


def pyproject() -> dict:
    """The [project] dependencies of pyproject.toml (read by pattern: tomllib needs Python 3.11)."""
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, flags=re.M | re.S).group(1)
    return {"project": {"dependencies": re.findall(r'^\s*"([^"]+)",', block, flags=re.M)}}


def test_pyproject_names_the_pinned_packages():
    deps = {_name(d) for d in pyproject()["project"]["dependencies"]}
    assert deps == set(pin_file()), (
        f"only in pyproject.toml: {sorted(deps - set(pin_file()))}; "
        f"only in requirements.txt: {sorted(set(pin_file()) - deps)}")


def test_torch_is_pinned_to_the_cpu_build_on_disk():
    assert pin_file()["torch"] == ["torch==2.13.0"]
    assert "torch==2.13.0" in pyproject()["project"]["dependencies"]
    assert "torchvision" not in pin_file(), "torchvision fails to import beside torch 2.13.0 here"


def test_every_pin_is_exact():
    for name, lines in pin_file().items():
        for line in lines:
            assert "==" in line, f"requirements.txt: {line!r} is not an exact pin"


def test_environment_yml_delegates_to_the_pin_file():
    text = (ROOT / "environment.yml").read_text()
    pip_lines = re.findall(r"^\s+- (-r .+|-e .+)$", text, flags=re.M)
    assert pip_lines == ["-r requirements.txt", "-e ."], pip_lines
    conda_pkgs = re.findall(r"^  - ([a-z][\w=.]*)\s*$", text, flags=re.M)
    assert sorted(_name(p) for p in conda_pkgs) == ["pip", "python"], (
        f"environment.yml should install only python and pip from conda, got {conda_pkgs}")


def test_makefile_registers_the_kernel_the_notebooks_use():
    assert f"KERNEL  := {KERNEL}" in (ROOT / "Makefile").read_text()
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "solutions").glob("*.ipynb"))
    assert notebooks, "no notebooks found"
    for path in notebooks:
        spec = nbformat.read(path, as_version=4).metadata.get("kernelspec", {})
        assert spec.get("name") == KERNEL, f"{path.name}: kernelspec {spec.get('name')!r}, expected {KERNEL!r}"


def test_ci_runs_make_test():
    script = (ROOT / ".ci" / "run").read_text()
    assert script.rstrip().endswith("make test")


def test_library_does_not_import_plotting():
    """Only course_lib.viz may import matplotlib or ipywidgets (a fresh interpreter checks)."""
    import pkgutil
    import subprocess
    import sys

    import course_lib
    modules = [m.name for m in pkgutil.walk_packages(course_lib.__path__, "course_lib.")
               if ".viz" not in m.name and not m.name.endswith("__main__")]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(sorted({'matplotlib', 'ipywidgets'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"course_lib (outside viz/) imported {out.stdout.strip()}"


# ---- behaviour pinned down by mutation testing

def _fake_accelerators(monkeypatch, cuda: bool, mps: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_get_device_picks_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    monkeypatch.delenv(course_device.ENV_VAR, raising=False)
    _fake_accelerators(monkeypatch, cuda, mps)
    assert course_device.get_device() == torch.device(expected)


def test_course_device_forces_the_choice_and_explains_a_bad_one(monkeypatch):
    _fake_accelerators(monkeypatch, cuda=True, mps=True)
    monkeypatch.setenv(course_device.ENV_VAR, " CPU ")       # a GPU machine behaving like a laptop
    assert course_device.get_device() == torch.device("cpu")
    monkeypatch.setenv(course_device.ENV_VAR, "gpu")
    with pytest.raises(ValueError, match="'gpu' is not a device; use cpu, cuda or mps"):
        course_device.get_device()
    _fake_accelerators(monkeypatch, cuda=False, mps=False)
    monkeypatch.setenv(course_device.ENV_VAR, "cuda")
    with pytest.raises(ValueError, match=r"COURSE_DEVICE=cuda but torch.cuda.is_available\(\) is False"):
        course_device.get_device()
    monkeypatch.setenv(course_device.ENV_VAR, "mps")        # not a Mac: say so now, not at the first .to()
    with pytest.raises(ValueError, match=r"COURSE_DEVICE=mps but torch.backends.mps.is_available\(\) is False"):
        course_device.get_device()
    _fake_accelerators(monkeypatch, cuda=False, mps=True)
    assert course_device.get_device() == torch.device("mps")


def test_describe_names_the_given_device_and_synchronize_waits_on_the_right_one(monkeypatch):
    monkeypatch.setenv(course_device.ENV_VAR, "cpu")
    assert course_device.describe(torch.device("cpu")) == f"cpu ({torch.get_num_threads()} threads)"
    assert course_device.describe(torch.device("mps")) == "mps"    # the device given, not get_device()'s
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(("cuda", device)))
    monkeypatch.setattr(torch.mps, "synchronize", lambda: calls.append(("mps", None)))
    course_device.synchronize(torch.device("cpu"))
    assert calls == []
    course_device.synchronize(torch.device("cuda", 0))
    course_device.synchronize(torch.device("mps"))
    assert calls == [("cuda", torch.device("cuda", 0)), ("mps", None)]
    course_device.synchronize("cuda:0")                    # a device string, as torch accepts
    assert calls[-1] == ("cuda", torch.device("cuda", 0))



def test_every_training_test_reruns_on_the_other_cpu_kernels():
    """A test marked `training` asserts an outcome that float rounding can move: `make test` must run
    it again under ATEN_CPU_CAPABILITY=avx2 and default (the Makefile's FLOAT_TESTS)."""
    makefile = (ROOT / "Makefile").read_text()
    listed = set(re.findall(r"tests/test_\w+\.py", re.search(r"^FLOAT_TESTS :=(.*?)\n\S", makefile,
                                                                flags=re.M | re.S).group(1)))
    marked = {f"tests/{p.name}" for p in (ROOT / "tests").glob("test_*.py")
              if re.search(r"^@pytest\.mark\.training", p.read_text(), flags=re.M)}
    assert marked, "no test is marked training"
    assert marked <= listed, f"marked `training` but not rerun by make test-cpu-kernels: {sorted(marked - listed)}"
    assert {"avx2", "default"} <= set(re.search(r"^CPU_KERNELS := (.*)$", makefile, flags=re.M).group(1).split())
