import re
from pathlib import Path

import pytest

from connector.labeling_config import parse_labeling_config
from connector.routing import Router
from connector.task_spec import TaskSpec

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_task_file_is_valid_and_drives_router_and_labeling_config(tmp_path):
    block = re.search(r"```toml\n(.*?)```", README.read_text(), re.DOTALL).group(1)
    (tmp_path / "task.toml").write_text(block)
    spec = TaskSpec.load(tmp_path / "task.toml")
    router = Router(spec.routing)
    assert router.policy.label_overrides == {"rotten": 0.98} and router.policy.random_share == 0.2
    (control,) = parse_labeling_config(spec.label_config())
    assert control.labels == ("fresh", "rotten") and control.data_key == "text" and not control.multiple


def test_switching_tools_is_one_setting():
    ls = TaskSpec(name="t", labels=["a", "b"])
    ar = TaskSpec(name="t", labels=["a", "b"], tool="argilla")
    assert (ls.tool, ar.tool) == ("label_studio", "argilla") and ls.project_name == ar.project_name == "t"


def test_bad_task_files_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="two distinct"):
        TaskSpec(name="t", labels=["a", "a"])
    with pytest.raises(ValueError):
        TaskSpec(name="t", labels=["a", "b"], tool="prodigy")
