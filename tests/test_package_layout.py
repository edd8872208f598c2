"""The package's layout holds: what travels to the Hub as remote code is exactly one list, the remote code imports
only itself (relatively) and the libraries a bare Hub user has, every package folder is installed, and no module
imports another that imports it back (directly or around a circle)."""

from __future__ import annotations

import ast
import configparser
import importlib.util
import sys
from pathlib import Path

from faceptor.commands.push import PACKAGE, REMOTE_CODE_MODULES, remote_code_files

ROOT = Path(__file__).resolve().parent.parent
# What a user who loads a repo with `trust_remote_code=True` has: torch and transformers and what they bring.
REMOTE_CODE_LIBRARIES = {"torch", "torchvision", "transformers", "huggingface_hub", "safetensors", "numpy", "PIL"}
# Imported by the remote code only inside a function, for an optional feature (the bundled face detector).
REMOTE_CODE_OPTIONAL = {"onnxruntime"}


def installed_packages() -> list[str]:
    """The packages setup.cfg installs (one import namespace, `faceptor`)."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config["options"]["packages"].split()


def package_folder(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    return Path(next(iter(spec.submodule_search_locations)))


def package_modules() -> dict[str, Path]:
    """`{module name: file}` of every module the installed packages hold."""
    modules = {}
    for package in installed_packages():
        for path in package_folder(package).glob("*.py"):
            modules[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return modules


def imported_names(path: Path, module: str) -> list[tuple[str, int]]:
    """`(absolute module name, level)` of every import statement in the file, at any depth (a lazy import in a
    function is an edge of the graph too); `from package import name` yields `package.name`, which the caller
    shortens to the module that exists."""
    package = module if path.stem == "__init__" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [(alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            names += [(f"{base}.{alias.name}", node.level) for alias in node.names]
    return names


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph = {}
    for module, path in modules.items():
        targets = set()
        for name, _ in imported_names(path, module):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan): each holds at least one import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while not group or group[-1] != module:
                group.append(stack.pop())
            if len(group) > 1:
                groups.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return groups


def test_the_cycle_finder_finds_a_cycle_through_a_lazy_import(tmp_path):
    (tmp_path / "a.py").write_text("from .b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    from . import c\n")
    (tmp_path / "c.py").write_text("import pkg.a\n")
    (tmp_path / "d.py").write_text("from .a import y\n")
    modules = {f"pkg.{name}": tmp_path / f"{name}.py" for name in "abcd"}
    assert import_cycles(import_graph(modules)) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_no_module_of_the_package_imports_itself_around_a_circle():
    modules = package_modules()
    assert len(modules) > 40  # the whole package was found, not one folder of it
    assert import_cycles(import_graph(modules)) == []


def test_every_folder_of_python_code_is_an_installed_package():
    packages = installed_packages()
    folders = {package_folder(package).resolve() for package in packages}
    for package in packages:
        for init in package_folder(package).rglob("__init__.py"):
            if "__pycache__" not in init.parts:
                assert init.parent.resolve() in folders, f"{init.parent} is not listed in setup.cfg's packages"


def test_modeling_faceptor_holds_exactly_the_remote_code_besides_the_package_init():
    here = {path.stem for path in package_folder(PACKAGE).glob("*.py")} - {"__init__"}
    assert here == {module for module in REMOTE_CODE_MODULES if "." not in module}


def test_the_remote_code_imports_only_itself_relatively_and_what_a_hub_user_has():
    listed = {f"{PACKAGE}.{module}" for module in REMOTE_CODE_MODULES}
    for module in sorted(listed):
        path = Path(importlib.util.find_spec(module).origin)
        for name, level in imported_names(path, module):
            if name.split(".")[0] == PACKAGE:
                assert level > 0, f"{path.name} imports {name} absolutely: the flattened copy could not"
                target = name if name in listed else name.rpartition(".")[0]
                assert target in listed, f"{path.name} imports {name}, which does not travel"
            else:
                top = name.split(".")[0]
                allowed = REMOTE_CODE_LIBRARIES | REMOTE_CODE_OPTIONAL | set(sys.stdlib_module_names)
                assert top in allowed, f"{path.name} imports {name}, which a Hub user may not have"


def test_the_remote_code_files_have_distinct_names_when_flattened():
    files = remote_code_files()
    assert len(files) == len(REMOTE_CODE_MODULES)
    assert all(path.is_file() for path in files.values())


def test_every_class_a_saved_model_names_is_in_the_remote_code():
    from faceptor import (
        FacePerceptionPipeline,
        FaceptorConfig,
        FaceptorImageProcessor,
        FaceptorModel,
        NaiveFaceptorConfig,
        NaiveFaceptorModel,
    )

    files = remote_code_files()
    entry_points = [FaceptorConfig, FaceptorModel, NaiveFaceptorConfig, NaiveFaceptorModel]
    for entry in [*entry_points, FaceptorImageProcessor, FacePerceptionPipeline]:
        assert Path(sys.modules[entry.__module__].__file__).name in files, entry


def test_a_written_model_folder_holds_exactly_the_listed_remote_code(tmp_path):
    import json

    from conftest import tiny_config
    from faceptor import FaceptorModel
    from faceptor.commands.push import write_model_folder

    write_model_folder(FaceptorModel(tiny_config()), tmp_path)
    assert {path.name for path in tmp_path.glob("*.py")} == set(remote_code_files())
    config = json.loads((tmp_path / "config.json").read_text())
    processor = json.loads((tmp_path / "preprocessor_config.json").read_text())
    references = [*config["auto_map"].values(), *processor["auto_map"].values()]
    references.append(config["custom_pipelines"]["face-perception"]["impl"])
    for reference in references:
        assert (tmp_path / f"{reference.split('.')[0]}.py").is_file(), reference


def test_import_faceptor_pulls_in_none_of_the_tools():
    """`import faceptor` registers the model, processor and pipeline, and nothing else: no CLI, Hub push, Gradio,
    PyAV, video reader or face detector (they are found when first used). A fresh process, so nothing is cached."""
    import subprocess

    code = "import sys, faceptor; print('\\n'.join(sorted(sys.modules)))"
    loaded = set(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    )
    assert {"faceptor", "faceptor.modeling_faceptor", "faceptor.processing.pipeline_faceptor"} <= loaded
    tools = {f"{PACKAGE}.{name}" for name in ("commands", "video", "visualization", "processing.detection")}
    tools |= {"gradio", "av", "onnxruntime", "pyarrow"}
    assert not {module for module in loaded if module in tools or module.rpartition(".")[0] in tools}


def test_what_travels_is_the_two_folders_whole():
    from faceptor.commands.push import REMOTE_CODE_PACKAGES

    listed = set()
    for package in REMOTE_CODE_PACKAGES:
        prefix = package.removeprefix(PACKAGE).lstrip(".")
        listed |= {f"{prefix}.{p.stem}" if prefix else p.stem for p in package_folder(package).glob("*.py")}
    assert listed - {"__init__", "processing.__init__"} == set(REMOTE_CODE_MODULES)
