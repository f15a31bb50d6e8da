"""The README's commands parse: every `python -m` / `torchrun -m` / `deepspeed --module` line in its bash blocks
whose tool has a `build_parser` is accepted by it (flags, choices, required arguments)."""
from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
LAUNCH_RE = re.compile(r"(?:python -m|torchrun .*?-m|--module) ([\w.]+)(.*)")


def readme_commands() -> list[tuple[str, str]]:
    """(module, argument string) for each command line; shell variables become plausible values."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.lstrip().startswith("#"):
                continue
            m = LAUNCH_RE.search(line.split(" # ")[0])
            if m is None:
                continue
            args = m.group(2).rstrip().rstrip("'")
            args = args.replace("$split", "train").replace("$LOCAL_RANK", "0")
            args = re.sub(r'"?\$\{?\w+\}?"?', "1", args)  # "$SLURM_PROCID" and the like
            out.append((m.group(1), args))
    return out


COMMANDS = [c for c in readme_commands() if hasattr(importlib.import_module(c[0]), "build_parser")]


def test_the_readme_has_the_own_data_commands():
    modules = {m for m, _ in COMMANDS}
    assert {"video2token.train_tokenizer", "video2token.extract", "vimpac.pretrain", "vimpac.finetune",
            "vimpac.predict"} <= modules


@pytest.mark.parametrize("module, args", COMMANDS, ids=[f"{m}:{i}" for i, (m, _) in enumerate(COMMANDS)])
def test_readme_command_parses(module, args):
    if "..." in args or re.search(r"\[[^\]]*\]|[A-Z]{3,}_?[A-Z]*\b(?! *=)", args):
        pytest.skip("a template with placeholders")
    parser = importlib.import_module(module).build_parser()
    try:
        parser.parse_args(shlex.split(args))
    except SystemExit as e:
        pytest.fail(f"README: python -m {module}{args}: argparse refused it (exit {e.code})")
