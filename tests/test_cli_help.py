"""Every command-line tool's --help: `python -m` usage, the docstring's examples with their line continuations."""
from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINTS = {
    "video2token.extract": "video2token/extract.py",
    "video2token.inspect": "video2token/inspect.py",
    "video2token.visualize": "video2token/visualize.py",
    "video2token.train_tokenizer": "video2token/train_tokenizer.py",
    "video2token.synthetic": "video2token/synthetic.py",
    "video2token.tokenizers.dalle": "video2token/tokenizers/dalle.py",
    "vimpac.pretrain": "vimpac/pretrain.py",
    "vimpac.finetune": "vimpac/finetune.py",
    "vimpac.knn": "vimpac/knn.py",
    "vimpac.predict": "vimpac/predict.py",
    "vimpac.export": "vimpac/export.py",
    "vimpac.convert_original": "vimpac/convert_original.py",
    "vimpac.modeling": "vimpac/modeling.py",
    "vimpac.demo": "vimpac/demo/driver.py",
    "vimpac.demo.report": "vimpac/demo/report.py",
}


def help_text(module: str, capsys) -> str:
    main = importlib.import_module(module if module != "vimpac.demo" else "vimpac.demo.driver").main
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
def test_help_shows_python_m_usage_and_keeps_example_line_breaks(module, capsys):
    path = ENTRY_POINTS[module]
    text = help_text(module, capsys)
    assert text.startswith(f"usage: python -m {module} "), text[:200]
    assert not re.search(r"\b\w+\.py\b", text.split("\n\n")[0]), "usage names a file, not the module"
    source = (REPO / path).read_text()
    docstring = ast.get_source_segment(source, ast.parse(source).body[0]) or ""
    for line in docstring.splitlines():  # an example continued on the next line, as written in the source
        if line.lstrip().startswith("python -m") and line.endswith("\\"):
            start = line.rstrip("\\").rstrip()
            if start in text:  # (some tools show only the docstring's first line)
                assert start + " \\\n" in text, f"{module}: the line break after {start!r} is lost"
