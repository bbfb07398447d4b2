"""The packages' dependency arrows point one way (docs/architecture.md, "Layers"):

    fraudsys_cli -> local_stack -> training | cdk_app -> handlers -> fraud_adapters -> fraud_core

Import Linter builds the import graph of every module of these packages (imports inside functions
included) from ``[tool.importlinter]`` in pyproject.toml and checks the layers contract: a module
may import from the layers below its own, never from one above (and ``training`` and ``cdk_app``,
side by side, not from each other), directly or through a chain."""

import json
import tomllib
from pathlib import Path

import pytest
from importlinter import configuration
from importlinter.application import use_cases

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"

configuration.configure()


def _lint(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[bool, str]:
    passed = use_cases.lint_imports(str(config), cache_dir=None, no_logo=True, is_debug_mode=True)
    return passed, capsys.readouterr().out


def test_every_import_points_down_the_layers(capsys: pytest.CaptureFixture[str]) -> None:
    passed, report = _lint(PYPROJECT, capsys)
    assert passed, report
    assert "1 kept, 0 broken" in report


def test_the_check_finds_an_import_against_the_arrows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same graph against the layers upside down must break: the check is not vacuous (the
    command line does import the local stack and training, training imports the handlers)."""
    settings = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]
    (contract,) = settings["contracts"]
    contract["layers"].reverse()
    upside_down = tmp_path / "pyproject.toml"
    upside_down.write_text(
        "[tool.importlinter]\n"
        f"root_packages = {json.dumps(settings['root_packages'])}\n"
        "[[tool.importlinter.contracts]]\n"
        f"name = {json.dumps(contract['name'])}\n"
        'type = "layers"\n'
        f"layers = {json.dumps(contract['layers'])}\n"
    )
    passed, report = _lint(upside_down, capsys)
    assert not passed
    assert "0 kept, 1 broken" in report
    assert "fraudsys_cli" in report


@pytest.mark.parametrize("package", ["fraudsys_cli", "local_stack", "training", "cdk_app"])
def test_every_package_is_in_the_contract(package: str) -> None:
    settings = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]
    (contract,) = settings["contracts"]
    layers = {name.strip() for layer in contract["layers"] for name in layer.split("|")}
    assert package in layers
