"""The design document `docs/design.md` keeps up with what cites it and with the run config.

- Every "DESIGN.md §N" cited in README.md and in the .py/.md/.yaml files of the package, the
  runtime, benchmarks, tests, cluster files and configs (a list such as "DESIGN.md §7, §8" cites
  each number) must have a section heading `## N. ...` in docs/design.md, found by parsing the
  document's headings (not by searching its text for the number).
- Every key of `RunConfig`, walked recursively through the pydantic models of its fields
  (optional sections, unions and lists of sections included), must be named in the document as
  a code span of its dotted path (`observations.sigma`, `model.cbottle.label`, `seed`), so a key
  added to the config without documentation fails here.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path

from pydantic import BaseModel

from ensemble_da.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "design.md"
CITING_DIRS = ("ensemble_da", "actors", "benchmarks", "tests", "cluster", "configs")
CITING_SUFFIXES = {".py", ".md", ".yaml", ".yml"}

# "DESIGN.md §7", "DESIGN.md §7a", and the numbers listed after it: "DESIGN.md §2, §3 and §7".
CITATION = re.compile(r"DESIGN\.md\s+(§\d+[a-z]?(?:\s*(?:,|;|/|and|&)?\s*§\d+[a-z]?)*)")
SECTION_NUMBER = re.compile(r"§(\d+[a-z]?)")
# A section heading: "## 7a. Run config" (any heading level; the number, a dot, a title).
HEADING = re.compile(r"^#{1,6}\s+(\d+[a-z]?)\.\s+\S")


def citing_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for top in CITING_DIRS:
        files += sorted(p for p in (ROOT / top).rglob("*") if p.is_file() and p.suffix in CITING_SUFFIXES)
    return files


def citations() -> dict[str, list[str]]:
    """Section number → where it is cited (`path:line`)."""
    out: dict[str, list[str]] = {}
    for path in citing_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            for match in CITATION.finditer(line):
                for number in SECTION_NUMBER.findall(match.group(1)):
                    out.setdefault(number, []).append(f"{path.relative_to(ROOT)}:{lineno}")
    return out


def doc_sections() -> list[str]:
    """The section numbers of docs/design.md's headings, in order (fenced code skipped)."""
    numbers, fenced = [], False
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else HEADING.match(line)
        if m:
            numbers.append(m.group(1))
    return numbers


def _models_in(annotation) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds (`X`, `X | None`, `list[X]`, `dict[str, X]`, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def config_keys(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    """Every dotted key of `model`, sections and their keys alike."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        keys.append(key)
        seen: set[type[BaseModel]] = set()
        for sub in _models_in(field.annotation):
            if sub not in seen:
                seen.add(sub)
                keys += [k for k in config_keys(sub, key + ".") if k not in keys]
    return keys


def test_every_cited_section_has_a_heading():
    cited = citations()
    assert cited, "no DESIGN.md citations found: the scan is broken"
    have = set(doc_sections())
    missing = {n: where[:5] for n, where in sorted(cited.items()) if n not in have}
    assert not missing, f"docs/design.md has no section for: {missing} (headings found: {sorted(have)})"


def test_section_headings_are_unique():
    numbers = doc_sections()
    dupes = sorted({n for n in numbers if numbers.count(n) > 1})
    assert not dupes, f"docs/design.md numbers these sections more than once: {dupes}"


def test_every_config_key_is_documented():
    text = DOC.read_text(encoding="utf-8")
    keys = config_keys()
    assert {"seed", "model.kind", "observations.sigma", "cluster.address"} <= set(keys), "config walk is broken"
    missing = [k for k in keys if not re.search("`" + re.escape(k) + r"(?=[`:=\s\[])", text)]
    assert not missing, f"docs/design.md does not name these RunConfig keys (as `key`): {missing}"


def test_readme_links_the_design_document():
    assert "docs/design.md" in (ROOT / "README.md").read_text(encoding="utf-8")
