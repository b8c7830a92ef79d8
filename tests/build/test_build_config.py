"""The build for users (issue 17): CMake on its own, warnings as errors only when asked, py.typed.

- `cmake -S . -B build` configures without scikit-build-core: the version comes from
  pyproject.toml, pybind11 from `python -m pybind11 --cmakedir`, or a clear error says what to do.
- -Werror (nvcc: -Werror=all-warnings) only with -DMSACCUM_WERROR=ON (scripts/test.sh, CI), never
  in a user's `pip install`: a warning a newer compiler adds must not break an install. Checked
  on the compile commands CMake generates, and by compiling one of our sources with an extra
  warning that fires on it.

These configure (never build) the project into temporary folders: a few seconds each.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

import mindspore_accum

REPO = Path(__file__).resolve().parents[2]

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None


def pyproject_version():
    text = (REPO / "pyproject.toml").read_text()
    if tomllib is not None:
        return tomllib.loads(text)["project"]["version"]
    return re.search(r'^version\s*=\s*"([^"]+)"', text, re.M).group(1)


def cmake():
    exe = shutil.which("cmake")
    if exe is None:
        pytest.skip("cmake not found")
    return exe


def plain_env():
    """The environment without anything scikit-build-core or pip's build would set."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SKBUILD", "CMAKE_", "CXXFLAGS", "CUDAFLAGS", "MSACCUM_"))
    }


def configure(build_dir, *defines, python=sys.executable):
    cmd = [
        cmake(),
        "-S",
        str(REPO),
        "-B",
        str(build_dir),
        f"-DPython_EXECUTABLE={python}",
        "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON",
        *defines,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=plain_env(), timeout=600)


def compile_commands(build_dir):
    return json.loads((Path(build_dir) / "compile_commands.json").read_text())


@pytest.fixture(scope="module")
def configured(tmp_path_factory):
    """{"OFF": build dir, "ON": build dir}: the project configured by plain CMake, with the
    default MSACCUM_WERROR and with it ON (CUDA as found: the nvcc flags are checked when nvcc is
    here)."""
    dirs = {}
    for werror in ("OFF", "ON"):
        build = tmp_path_factory.mktemp(f"cmake_werror_{werror}")
        defines = [] if werror == "OFF" else ["-DMSACCUM_WERROR=ON"]
        proc = configure(build, *defines)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        dirs[werror] = build
    return dirs


def test_plain_cmake_configures_with_the_version_of_pyproject(configured):
    cache = (configured["OFF"] / "CMakeCache.txt").read_text()
    assert re.search(r"^MSACCUM_WERROR:BOOL=OFF$", cache, re.M), "MSACCUM_WERROR must default to OFF"
    version = pyproject_version()
    bindings = [c for c in compile_commands(configured["OFF"]) if c["file"].endswith("bindings.cpp")]
    assert bindings, "no compile command for csrc/frontends/python_bindings.cpp"
    assert f'MSACCUM_VERSION=\\"{version}\\"' in bindings[0]["command"], bindings[0]["command"]


def test_werror_only_with_msaccum_werror_on(configured):
    off, on = compile_commands(configured["OFF"]), compile_commands(configured["ON"])
    assert off and len(off) == len(on)
    for c in off:
        assert "-Werror" not in c["command"], f"-Werror without MSACCUM_WERROR: {c['command']}"
    for c in on:
        if c["file"].endswith(".cu"):
            assert "-Werror=all-warnings" in c["command"] and "-Xcompiler=-Werror" in c["command"], c["command"]
        else:
            assert " -Werror " in f" {c['command']} ", c["command"]
    languages = {Path(c["file"]).suffix for c in on}
    if shutil.which("nvcc") or os.environ.get("CUDACXX"):
        assert ".cu" in languages, "nvcc is here but no CUDA source was configured"


def compile_with(command, extra, out):
    """Runs a compile command from compile_commands.json with `extra` flags, into `out`."""
    args = shlex.split(command["command"])
    o = args.index("-o")
    args[o + 1] = str(out)
    return subprocess.run(args + extra, cwd=command["directory"], capture_output=True, text=True, timeout=600)


def test_a_new_compiler_warning_does_not_break_a_user_build(configured, tmp_path):
    """-Wfloat-equal (standing for a warning a newer compiler adds) fires in csrc/frontends/aot_ops.h
    (compiled as part of mindspore_aot.cpp): the user's build compiles it with the warning shown;
    the CI build (MSACCUM_WERROR=ON) fails."""
    results = {}
    for werror, build in configured.items():
        aot = [c for c in compile_commands(build) if c["file"].endswith("aot.cpp")][0]
        results[werror] = compile_with(aot, ["-Wfloat-equal"], tmp_path / f"aot_{werror}.o")
    assert results["OFF"].returncode == 0, results["OFF"].stderr[-2000:]
    assert "-Wfloat-equal" in results["OFF"].stderr, "the extra warning did not fire: the test proves nothing"
    assert results["ON"].returncode != 0 and "-Werror=float-equal" in results["ON"].stderr, results["ON"].stderr[-2000:]


def test_missing_pybind11_is_a_clear_error(tmp_path):
    """A Python without pybind11 (a bare virtual environment): configuring stops and says how to
    install it or point CMake at it."""
    env_dir = tmp_path / "bare"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    if subprocess.run([str(python), "-c", "import pybind11"], capture_output=True).returncode == 0:
        pytest.skip("pybind11 is importable even from a bare virtual environment")
    proc = configure(tmp_path / "build", "-DMSACCUM_CUDA=OFF", python=python)
    if proc.returncode == 0:
        pytest.skip("a pybind11 CMake package installed system-wide was found")
    out = proc.stdout + proc.stderr
    assert "pybind11 was not found" in out and "pip install pybind11" in out and "--cmakedir" in out, out[-3000:]


def test_py_typed_is_installed():
    """PEP 561: type checkers use the package's annotations and _C.pyi only with py.typed."""
    package = Path(mindspore_accum.__file__).resolve().parent
    assert (package / "py.typed").is_file()
    assert (package / "_C.pyi").is_file()
