"""No feature step is undefined or ambiguous (ORCH-6011).

pytest-bdd fails a scenario whose step has no definition only when that
scenario runs, and silently picks one definition when several match; this
check parses every feature file with pytest-bdd's own parser, renders every
Scenario Outline row, and requires each step to match exactly one
definition of its kind.
"""

from __future__ import annotations

from pathlib import Path

from pytest_bdd import parsers
from pytest_bdd.feature import get_features

FEATURES = Path(__file__).resolve().parent / "features"


def step_problems(features: Path, defs: list[tuple[str, parsers.StepParser]]) -> list[str]:
    problems = []
    for feature in get_features([str(features)]):
        if not feature.scenarios:
            problems.append(f"{feature.rel_filename}: no scenario")
        for template in feature.scenarios.values():
            contexts = [ctx for ex in template.examples for ctx in ex.as_contexts()] or [{}]
            for ctx in contexts:
                for step in template.render(ctx).steps:
                    hits = [p for kind, p in defs if kind == step.type and p.is_matching(step.name)]
                    where = f"{Path(feature.filename).name}:{step.line_number}"
                    if not hits:
                        problems.append(f"{where}: undefined {step.type} step {step.name!r}")
                    elif len(hits) > 1:
                        problems.append(f"{where}: ambiguous {step.type} step {step.name!r}")
    return problems


def test_every_step_matches_exactly_one_definition(step_defs):
    """Zero undefined and zero ambiguous steps in every feature file."""
    assert len(list(FEATURES.glob("*.feature"))) >= 7
    assert step_problems(FEATURES, step_defs) == []


def test_the_check_finds_undefined_and_ambiguous_steps(step_defs, tmp_path):
    """The check is not vacuous: a new undefined step and a duplicated definition fail it."""
    (tmp_path / "new.feature").write_text(
        "Feature: New\n"
        "  Scenario: Something nobody implemented\n"
        "    Given an orchestratord with a mock pool\n"
        "    When I teleport the queue to the moon\n"
        '    Then the answer is 202 with code "X"\n'
    )
    duplicated = [*step_defs, ("then", parsers.parse('the answer is {status} with code "{c}"'))]
    problems = step_problems(tmp_path, duplicated)
    assert problems == [
        "new.feature:4: undefined when step 'I teleport the queue to the moon'",
        "new.feature:5: ambiguous then step 'the answer is 202 with code \"X\"'",
    ]
