"""The simulated loop against a real Label Studio: tasks, users and answers made through its API."""

from __future__ import annotations

import pytest

from connector.datasets import LabeledTexts
from connector.store import StateStore
from connector.tools.label_studio import LabelStudioTool
from hitl.simulate import SimulationConfig, run

pytestmark = pytest.mark.slow


def test_a_run_against_label_studio_pushes_answers_and_pulls_back_every_answer(label_studio, rt_sample, encoder,
                                                                                 tmp_path):
    texts, labels = rt_sample
    data = LabeledTexts("rt120", list(texts[:120]), list(labels[:120]))
    cache = StateStore(f"sqlite:///{tmp_path}/cache.db")
    cache.migrate()
    cfg = SimulationConfig(budget=0.3, batch=12, seed_size=12, eval_fraction=0.0, seed=5, target_error=0.1)
    result = run(data, cfg, cache_store=cache, encoder=encoder, label_studio=(label_studio.url, label_studio.token))
    cache.close()
    client = LabelStudioTool(label_studio.url, label_studio.token)
    project = next(p for p in client._ls.projects.list() if p.title.startswith("simulation rt120 seed 5"))
    tasks = list(client._ls.tasks.list(project=project.id, fields="all"))
    assert len(tasks) == result.reviewed and 30 <= result.reviewed <= 36
    assert sum(len(t.annotations) for t in tasks) == result.answers  # every answer made in LS came back once
    assert all(len(t.annotations) >= 2 for t in tasks)
    # items after the seed carry the model's suggestion (those shown without one: an empty prediction)
    assert any(p.result for t in tasks for p in t.predictions)
    assert result.label_accuracy >= result.no_review_accuracy
