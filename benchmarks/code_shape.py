"""Code-shape figures of issue 10: the longest function in ``cptcore/train/`` and the
imports inside functions (all, and of cptcore's own modules).

Run: ``python benchmarks/code_shape.py [REPO_ROOT]`` (default: this checkout).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def shape(root: Path) -> dict:
    longest, where, own, total = 0, "", 0, 0
    for path in sorted((root / "cptcore").rglob("*.py")):
        seen = set()  # per file: ids of a freed tree's nodes are reused by the next file's
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if "train" in path.relative_to(root / "cptcore").parts[:1]:
                n = node.end_lineno - node.lineno + 1
                if n > longest:
                    longest, where = n, f"{path.relative_to(root)}:{node.name}"
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)) and id(sub) not in seen:
                    seen.add(id(sub))
                    total += 1
                    own += isinstance(sub, ast.ImportFrom) and (sub.level > 0 or (sub.module or "").startswith("cptcore"))
    return {"longest_function_lines": longest, "longest_function": where, "in_function_imports": total,
            "in_function_imports_of_cptcore": own}


if __name__ == "__main__":
    print(shape(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]))
