"""No layer points back up: the import rules the architecture doc states, checked on the source."""

from __future__ import annotations

import ast

import pytest

from tests.conftest import REPO


def imported_modules(path) -> set[str]:
    """Every module a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def files(folder: str) -> list:
    return sorted((REPO / folder).rglob("*.py"))


def offending(path, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        name
        for name in imported_modules(path)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    )


@pytest.mark.parametrize("folder", ["tokenizer", "dynamics", "common"])
def test_models_losses_and_shared_code_import_neither_ray_nor_mlflow_nor_jobs(folder):
    for path in files(folder):
        assert not offending(path, ("ray", "mlflow", "jobs")), path


def test_the_pipeline_package_imports_nothing_from_jobs_or_the_models_training():
    for path in files("pipeline"):
        assert not offending(path, ("jobs", "mlflow", "tokenizer.train", "dynamics.train")), path


def test_a_stage_imports_no_other_stage():
    stages = {path.stem for path in (REPO / "jobs" / "stages").glob("*.py")} - {"__init__", "base"}
    assert stages >= {"ingest", "train_tokenizer", "encode", "train_dynamics", "generate"}
    for stage in stages:
        others = tuple(f"jobs.stages.{other}" for other in stages - {stage})
        assert not offending(REPO / "jobs" / "stages" / f"{stage}.py", others), stage


def test_the_model_files_import_only_torch_and_their_own_settings():
    for path in (REPO / "tokenizer" / "model.py", REPO / "dynamics" / "model.py"):
        project = {
            name for name in imported_modules(path) if name.split(".")[0] in ("pipeline", "jobs", "common")
        }
        assert not project, (path, project)
