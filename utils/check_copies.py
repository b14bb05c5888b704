"""Checks `# Copied from <target>[ with A->B]` blocks against their target's current source.

Upstream's `utils/check_copies.py` only searches `src/diffusers`; this one resolves `diffusers.` and `diffusers_sa3.`
targets with `importlib` + `inspect.getsource`. Run `python utils/check_copies.py` (CI does); exit code 1 on drift.
"""

import importlib
import inspect
import re
import sys
import textwrap
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
COPIED_RE = re.compile(r"^(\s*)# Copied from ((?:diffusers_sa3|diffusers)\.[\w.]+)(?: with (.*))?$")


def resolve(target: str):
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return inspect.unwrap(obj) if callable(obj) else obj
    raise ImportError(target)


def normalize(text: str) -> str:
    return "\n".join(line.rstrip() for line in textwrap.dedent(text).strip("\n").splitlines())


def check_file(path: Path):
    errors = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        match = COPIED_RE.match(line)
        if not match:
            continue
        indent, target, replacements = match.groups()
        try:
            obj = resolve(target)
            expected = inspect.getsource(obj)
        except Exception as e:  # noqa: BLE001 - report any resolution failure
            errors.append(f"{path}:{i + 1}: cannot resolve {target} ({e})")
            continue
        for pair in (replacements or "").split(","):
            if "->" in pair:
                old, new = (p.strip() for p in pair.split("->"))
                expected = expected.replace(old, new)
        expected_lines = normalize(expected).splitlines()
        actual = "\n".join(lines[i + 1 : i + 1 + len(expected_lines)])
        if normalize(actual) != normalize(expected):
            errors.append(f"{path}:{i + 1}: block differs from {target}; copy the target again or drop the marker")
    return errors


def main():
    errors = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        errors += check_file(path)
    for error in errors:
        print(error)
    print(f"check_copies: {len(errors)} problem(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
