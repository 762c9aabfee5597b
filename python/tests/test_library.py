"""Finding libetap, and what `import etap` does (and does not) do."""

import os
import subprocess
import sys

import etap
from etap import _lib

PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code, env_changes):
    env = dict(os.environ)
    for k, v in env_changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    env["PYTHONPATH"] = PKG_PARENT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)


def test_library_path_and_info():
    path = etap.library_path()
    assert os.path.isfile(path)
    info = etap.library_info()
    assert info["path"] == path
    assert info["version"] == "0.1.0"
    assert "cpu" in info["backends"]
    assert info["search"][-1].endswith(": loaded")
    if os.environ.get("ETAP_LIBRARY"):
        assert info["source"] == "ETAP_LIBRARY"
        assert os.path.samefile(path, os.environ["ETAP_LIBRARY"])
    assert isinstance(etap.cuda_available(), bool)


def test_import_loads_nothing_and_imports_neither_numpy_nor_torch():
    r = run_python("import sys, etap, etap._lib as L; "
                   "print('numpy' in sys.modules, 'torch' in sys.modules, L._library is None)", {})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False", "True"]


def test_missing_etap_library_lists_the_place_and_why():
    r = run_python("import etap\n"
                   "try:\n"
                   "    etap.library_path()\n"
                   "except etap.EtapLibraryError as e:\n"
                   "    assert isinstance(e, ImportError) and isinstance(e, etap.EtapError)\n"
                   "    print(e)\n",
                   {"ETAP_LIBRARY": "/nonexistent/libetap.so"})
    assert r.returncode == 0, r.stderr
    assert "ETAP_LIBRARY: /nonexistent/libetap.so: does not exist" in r.stdout
    assert "ETAP_LIBRARY is set, so no other place was tried" in r.stdout


def test_etap_library_pointing_at_a_non_library(tmp_path):
    bogus = tmp_path / "libetap.so"
    bogus.write_text("not an ELF file")
    r = run_python("import etap\n"
                   "try:\n"
                   "    etap.library_info()\n"
                   "except etap.EtapLibraryError as e:\n"
                   "    print(e)\n", {"ETAP_LIBRARY": str(bogus)})
    assert r.returncode == 0, r.stderr
    assert "cannot be loaded" in r.stdout and str(bogus) in r.stdout


def test_etap_library_pointing_at_another_library():
    import ctypes.util

    libm = ctypes.util.find_library("m") or "libm.so.6"
    r = run_python("import etap\n"
                   "try:\n"
                   "    etap.library_path()\n"
                   "except etap.EtapLibraryError as e:\n"
                   "    print(e)\n", {"ETAP_LIBRARY": libm})
    assert r.returncode == 0, r.stderr
    assert "is not libetap (missing etap_version" in r.stdout


def test_search_order_without_etap_library(monkeypatch):
    monkeypatch.delenv("ETAP_LIBRARY", raising=False)
    cands = _lib.candidates()
    wheres = [w for w, _ in cands]
    assert wheres[0] == "package directory"
    assert "build tree of this checkout" in wheres
    assert wheres[-1] == "system loader"
    # package dir before build trees before the system loader
    assert wheres.index("package directory") < wheres.index("build tree of this checkout") \
        < wheres.index("system loader")


def test_search_without_etap_library_finds_something_or_says_why():
    r = run_python("import etap\n"
                   "try:\n"
                   "    i = etap.library_info(); print('LOADED', i['source'], i['path'])\n"
                   "except etap.EtapLibraryError as e:\n"
                   "    print('FAILED', e)\n", {"ETAP_LIBRARY": None})
    assert r.returncode == 0, r.stderr
    if r.stdout.startswith("FAILED"):
        assert "package directory" in r.stdout and "system loader" in r.stdout
    else:
        assert r.stdout.startswith("LOADED")
