"""The documentation's links hold: every relative link in README.md and docs/*.md names a file that exists
and, with a #fragment, a heading of that file (GitHub's anchor rule), and README.md stays under 200 lines."""

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^```.*?^```", flags=re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", flags=re.MULTILINE)


def _prose(text: str) -> str:
    """The text outside code, where a `[..](..)` is a link."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def github_anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of a markdown file: lower case, punctuation dropped, spaces to
    hyphens, a repeated heading suffixed -1, -2, ..."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for heading in HEADING.findall(FENCE.sub("", text)):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def broken_links(document: Path) -> list[str]:
    """Each relative link of `document` whose file or anchor does not exist, as 'target: why'."""
    text = document.read_text()
    broken = []
    for target in LINK.findall(_prose(text)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...: not ours to check
            continue
        path_part, _, fragment = target.partition("#")
        linked = (document.parent / path_part).resolve() if path_part else document
        if not linked.exists():
            broken.append(f"{target}: no file {path_part}")
        elif fragment and linked.suffix == ".md" and fragment not in github_anchors(linked.read_text()):
            broken.append(f"{target}: no heading #{fragment} in {linked.name}")
    return broken


def test_every_relative_link_and_anchor_resolves():
    assert len(DOCUMENTS) > 2
    broken = {doc.relative_to(REPO_ROOT).as_posix(): broken_links(doc) for doc in DOCUMENTS}
    assert not {name: links for name, links in broken.items() if links}


def test_the_checker_finds_a_missing_file_and_a_missing_anchor(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## Export (ONNX, Triton)\n")
    document = tmp_path / "page.md"
    document.write_text(
        "# Page\n\n[ok](other.md#export-onnx-triton) [self](#page) [web](https://example.com/x.md)\n"
        "[gone](missing.md) [bad anchor](other.md#export) `[code](not-a-link.md)`\n"
        "```text\n[in a block](nor-this.md)\n```\n"
    )
    assert broken_links(document) == [
        "missing.md: no file missing.md",
        "other.md#export: no heading #export in other.md",
    ]


def test_github_anchor_rule():
    text = "# Running a detector over files (`python -m detection.predict`)\n## Notes\n## Notes\n"
    assert github_anchors(text) == {"running-a-detector-over-files-python--m-detectionpredict", "notes", "notes-1"}


def test_the_readme_fits_on_two_screens():
    assert len((REPO_ROOT / "README.md").read_text().splitlines()) < 200


def test_the_settings_table_is_generated_from_the_settings_class():
    from service.settings import Settings
    from service.settings_doc import SERVING_DOC, settings_table, with_table

    document = SERVING_DOC.read_text()
    assert with_table(document) == document, "run `python -m service.settings_doc` to rewrite the table"
    rows = [line for line in settings_table().splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == [name.upper() for name in Settings.model_fields]
    stale = document.replace("| `MAX_QUEUE` | `64` |", "| `MAX_QUEUE` | `32` |")
    assert stale != document and with_table(stale) == document
