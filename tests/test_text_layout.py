"""ddlm.text's layout: DiffusionPipeline is a thin front over generation, blocks, templates, infill and scoring.

Read from the source with ``ast``: no class there over 200 lines and no function over 60; the names the
pipeline module defined before the split still import from it (and from the 0.1 name ``ddlm.pipeline``).
"""

import ast
import pathlib

TEXT = pathlib.Path(__file__).resolve().parent.parent / "ddlm" / "text"
MAX_CLASS_LINES, MAX_FUNCTION_LINES = 200, 60


def test_no_class_or_function_in_ddlm_text_is_too_long():
    long = []
    for path in sorted(TEXT.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.end_lineno - node.lineno + 1 > limit:
                long.append(f"{path.name}: {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert long == []


def test_the_pipeline_module_still_exports_what_moved_out_of_it():
    from ddlm.pipeline import (BLOCKS_PER_BOUND, GAP, MASK_TEXT, MAX_LENGTH_COMBINATIONS, DiffusionPipeline, InfillCandidate,
                               Template)
    from ddlm.text import blocks, generation, infill, scoring, templates

    assert (GAP, MAX_LENGTH_COMBINATIONS, Template) == (templates.GAP, templates.MAX_LENGTH_COMBINATIONS, templates.Template)
    assert (MASK_TEXT, BLOCKS_PER_BOUND, InfillCandidate) == (generation.MASK_TEXT, scoring.BLOCKS_PER_BOUND, infill.InfillCandidate)
    assert DiffusionPipeline.sample_blocks.__module__ == "ddlm.text.pipeline" and callable(blocks.sample_blocks)
