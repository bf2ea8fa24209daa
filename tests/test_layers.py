"""The layers of DESIGN.md: every package of difflab imports only packages of its own layer or lower
ones. Every import counts, at module level or inside a function (a deferred import is still a
dependency), so a package cannot reach up by importing late."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import difflab

ROOT = Path(difflab.__file__).resolve().parent

# Layer of each top-level package (or module) of difflab; a package may import its own layer's
# packages and lower ones.
LAYERS = {
    "utils": 0,  # imports nothing of difflab
    "core": 1,
    "testing": 1,
    "sampling": 2,
    "schedules": 2,
    "guidance": 2,
    "restoration": 2,
    "inverse": 2,  # the deprecated alias of restoration
    "inversion": 2,
    "models": 3,
    "training": 3,
    "data": 3,
    "envs": 3,  # batched control environments and demonstrations, beside data
    "acceleration": 4,
    "text": 4,
    "metrics": 4,
    "interop": 4,
    "policy": 4,  # diffusion policies: sampling, training and execution of action chunks
    "timeseries": 4,  # probabilistic forecasting and imputation with diffusion; baselines
    "finetune": 4,  # reward and preference fine-tuning: rewards, methods (DDPO, DRaFT, DPO)
    "cli": 5,
    "pretrained": 5,
    "__init__": 5,  # difflab/__init__.py: the top-level API
    "__main__": 5,
}


def package_of(module: str) -> str:
    """The top-level part of a difflab module name ("difflab.models.unet" -> "models"), "__init__"
    for the name difflab itself (what ``from difflab import load`` reads)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imported_modules(source: str, package: str) -> list[str]:
    """The difflab modules that ``source`` imports anywhere in it: ``import difflab.x``, ``from
    difflab.x import y`` (difflab.x.y where y is a module), ``from difflab import load`` (the
    top-level API, "difflab") and relative imports, resolved against ``package``, the package of the
    importing module."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            name = node.module or ""
            if node.level:  # level 1 is the package itself, 2 its parent, ...
                parts = package.split(".")
                name = ".".join([*parts[: len(parts) + 1 - node.level], *([name] if name else [])])
            folder = ROOT.parent.joinpath(*name.split("."))
            for alias in node.names:
                sub = folder / alias.name
                is_module = sub.is_dir() or sub.with_suffix(".py").is_file()
                found.append(f"{name}.{alias.name}" if is_module else name)
    return list(dict.fromkeys(m for m in found if m == "difflab" or m.startswith("difflab.")))


def package_name(path: Path) -> str:
    """The package of a module file: "difflab.core" for core/grids.py and core/__init__.py."""
    return ".".join(path.relative_to(ROOT.parent).parent.parts)


def sources() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def top_level(path: Path) -> str:
    """The top-level package (or module) of difflab a file is part of: "core" for core/grids.py."""
    return path.relative_to(ROOT).parts[0].removesuffix(".py")


def test_every_package_has_a_layer():
    top = {top_level(p) for p in sources()}
    missing = sorted(top - set(LAYERS))
    assert not missing, f"give each package a layer in LAYERS (DESIGN.md): {', '.join(missing)}"


def test_packages_import_only_their_own_or_lower_layers():
    violations = []
    for path in sources():
        own = LAYERS.get(top_level(path))
        if own is None:
            continue  # test_every_package_has_a_layer names it
        for imported in imported_modules(path.read_text(), package_name(path)):
            layer = LAYERS.get(package_of(imported))
            where = path.relative_to(ROOT).as_posix()
            if layer is None:
                violations.append(f"{where} imports {imported} (a package with no layer)")
            elif layer > own:
                violations.append(f"{where} imports {imported} (layer {layer} > {own})")
    if violations:
        pytest.fail("\n".join(["imports of a higher layer:", *sorted(set(violations))]), False)


def test_the_walk_sees_every_form_of_import():
    source = """
import difflab.models.unet
from difflab import sampling, load
from difflab.training.loop import train
from . import grids
from ..utils import files

def late():
    from difflab.cli import main
"""
    assert imported_modules(source, "difflab.core") == [
        "difflab.models.unet",
        "difflab.sampling",
        "difflab",
        "difflab.training.loop",
        "difflab.core.grids",
        "difflab.utils.files",
        "difflab.cli",
    ]


def test_sampling_a_saved_model_imports_no_training_module(tmp_path):
    """Loading and sampling (from Python and from the command line, images and text) is inference:
    it builds nothing of training (issue 20: pretrained -> training was on the sampling path)."""
    code = f"""
import sys, difflab
from difflab import text
from difflab.cli import main
difflab.load("mnist").sample(2, 3, steps=2, guidance=2.0)
text.load("shakespeare").generate(1, 8, steps=2)
main(["sample", "--model", "mnist", "--steps", "2", "--n", "2", "--out", r"{tmp_path / "g.png"}"])
main(["text", "sample", "--model", "shakespeare", "--steps", "2", "--n", "1", "--length", "8",
      "--out", r"{tmp_path / "s.txt"}"])
print(sorted(m for m in sys.modules if m.startswith("difflab.training")))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
