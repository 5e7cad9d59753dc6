"""The findings the report prints live in benchmarks/README.md and are found by target key."""

from __future__ import annotations

import pathlib
import re

from benchmarks.suite import findings, headline
from benchmarks.suite.sides import SIDES

SUITE = pathlib.Path(findings.__file__).resolve().parent


def test_every_finding_names_a_target_family_the_suite_checks():
    found, notes = findings._parse()
    assert found and notes.startswith("**Noticed along the way")
    source = "\n".join(p.read_text() for p in SUITE.rglob("*.py"))
    families = set(re.findall(r'f"([a-z_]+)/', source)) | set(re.findall(r'"([a-z_]+)/', source))
    families |= {f"vs_{side}" for side in SIDES}  # f"vs_{side}/{name}" in training.py
    families |= {f"headline_{target[0]}" for target in headline.TARGETS}
    # f"{key.split('_')[0]}_vs_sequential" for each end-to-end part in vectorized.py:
    families |= {f"{kind}_vs_sequential" for kind in ("ensemble", "search", "bayes")}
    for prefix in found:
        assert prefix.split("/")[0] in families, prefix


def test_the_longest_matching_prefix_wins_and_unknown_keys_find_nothing():
    found, _ = findings._parse()
    general = [k for k in found if k.endswith("/")]
    specific = [k for k in found if not k.endswith("/") and k.split("/")[0] + "/" in found]
    for key in specific:
        assert findings.lookup(key + "_b64_adam") == found[key]
    assert general and findings.lookup("no_such_target/x") is None


def test_a_readme_without_findings_gives_none(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# benchmarks\n\nNo findings here.\n")
    assert findings._parse(readme) == ({}, "")
