"""Write one small ``mmlu_local_<subject>.yaml`` per subject found in ``<data dir>/mmlu/test``.

Run ``python -m harness.tasks.mmlu._generate [data_dir]`` after the subject list changes; the files are
committed so that task discovery never needs the data directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

from harness.data.paths import resolve_data_dir

HERE = Path(__file__).resolve().parent
SUBJECT_YAML = """include: _template.yaml
task: mmlu_local_{subject}
task_alias: {subject}
description: "The following are multiple choice questions (with answers) about {words}.\\n\\n"
dataset_kwargs:
  reader: mmlu_csv
  files: {{dev: mmlu/dev/{subject}_dev.csv, test: mmlu/test/{subject}_test.csv}}
"""


def subjects(data_dir: str | None = None) -> list[str]:
    """Subject names, from the test files ``<subject>_test.csv``."""
    test_dir = resolve_data_dir(data_dir) / "mmlu" / "test"
    return sorted(p.name.removesuffix("_test.csv") for p in test_dir.glob("*_test.csv"))


def main(data_dir: str | None = None) -> None:
    """(Re)write every subject YAML next to this script."""
    for subject in subjects(data_dir):
        text = SUBJECT_YAML.format(subject=subject, words=subject.replace("_", " "))
        (HERE / f"mmlu_local_{subject}.yaml").write_text(text)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
