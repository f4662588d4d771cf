"""No layer points back up: the import rules the architecture doc states, checked on the source."""

from __future__ import annotations

import ast

import pytest

from tests.conftest import REPO


def imported_modules(path, with_names: bool = False) -> set[str]:
    """Every module a file imports, at the top or inside functions; `with_names` adds what a
    `from` import takes as a possible module too (`from jobs import tracking`: `jobs.tracking`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            if with_names:
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
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


PACKAGES = ("common", "pipeline", "tokenizer", "dynamics", "jobs")


def module_name(path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_two_modules_import_each_other_even_inside_a_function():
    """The rule instead of "no import inside a function": imports inside functions are fine
    (the CLI's keep `stvideo --help` fast, a stage's keep Ray Train out of a plain run), but
    counted with the top-level ones the project's modules form no cycle, so no import hides
    one. `from jobs import tracking` counts as importing `jobs.tracking`."""
    paths = {module_name(path): path for package in PACKAGES for path in files(package)}
    graph = {name: sorted(imported_modules(path, True) & set(paths) - {name}) for name, path in paths.items()}

    def cycle_from(start: str) -> list[str] | None:
        """A path of imports from `start` back to it, depth first; None if there is none."""
        trail, seen = [(start, iter(graph[start]))], {start}
        while trail:
            name, pending = trail[-1]
            following = next(pending, None)
            if following is None:
                trail.pop()
            elif following == start:
                return [step for step, _ in trail] + [start]
            elif following not in seen:
                seen.add(following)
                trail.append((following, iter(graph[following])))
        return None

    cycles = [cycle for cycle in map(cycle_from, sorted(graph)) if cycle]
    assert not cycles, " ; ".join(" -> ".join(cycle) for cycle in cycles)


def test_the_stage_registry_holds_the_names_config_checks_in_pipeline_order():
    from jobs.config import STAGE_NAMES
    from jobs.stages import STAGES

    assert tuple(STAGES) == STAGE_NAMES
