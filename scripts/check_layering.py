#!/usr/bin/env python3
"""Checks that the parts of src/ include each other only as docs/architecture.md allows.

The table under the heading "Parts and what each may include" in
docs/architecture.md is the rule: one row per part, its folder under src/ and
the parts it may include. Every file under src/ must sit in a listed folder,
and each `#include "x/..."` in it must name its own part, a part its row
allows, or a public header (`ordo/...`). Nothing in src/ may include tests,
tools, benchmarks or examples. Exit status 1 lists every violation.

Usage: check_layering.py REPOSITORY_ROOT
"""
import pathlib
import re
import sys

HEADING = "## Parts and what each may include"


def read_rules(doc: pathlib.Path) -> dict[str, set[str]]:
    text = doc.read_text()
    if HEADING not in text:
        sys.exit(f"{doc}: no section '{HEADING}'")
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    rules: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[1].startswith("`src/"):
            continue
        folder = cells[1].strip("`").removeprefix("src/").rstrip("/")
        allowed = {a.strip() for a in cells[2].replace("—", "").split(",") if a.strip()}
        rules[folder] = allowed
    if not rules:
        sys.exit(f"{doc}: the '{HEADING}' table has no rows")
    return rules


def main() -> int:
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    rules = read_rules(root / "docs" / "architecture.md")
    include = re.compile(r'^\s*#\s*include\s+"([^"]+)"')
    problems = []
    for path in sorted((root / "src").rglob("*")):
        if path.suffix not in (".cpp", ".hpp"):
            continue
        rel = path.relative_to(root / "src")
        part = rel.parts[0] if len(rel.parts) > 1 else None
        if part not in rules:
            problems.append(f"src/{rel}: not in a folder that docs/architecture.md lists")
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            m = include.match(line)
            if not m:
                continue
            target = m.group(1)
            head = target.split("/", 1)[0] if "/" in target else None
            if head == "ordo" or head == part or head in rules[part]:
                continue
            if head in rules:
                problems.append(f"src/{rel}:{number}: part '{part}' may not include '{target}' (part '{head}')")
            else:
                problems.append(f"src/{rel}:{number}: '{target}' is neither a public header nor a part of src/")
    for p in problems:
        print(p)
    print(f"{len(rules)} parts, {len(problems)} violations")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
