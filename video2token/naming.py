"""Token-store directory names, as the original VIMPAC extraction script wrote them.

`{tokenizer}_{dataset}_{split}_fps{F}_hflip{h}_{S}{crop}{C}`, e.g.
`dalle_ucf101_train_split1_fps2_hflip0_128center128`. `video2token/scripts/extract_tokens.sh`
builds the same string in bash; a test keeps the two in agreement.
"""
from __future__ import annotations

import math
import re

#: where a square crop sits along a frame's long side; "none" keeps the whole resized frame. The one
#: definition (read_video and the extract CLI import it); it lives here because this module imports nothing
#: heavy. A store name needs a square crop, so `store_name` refuses "none".
CROP_TYPES: tuple[str, ...] = ("top", "center", "bottom", "none")
#: a frame's channels after resize / crop / flip: "rgb" as decoded, or a permutation of it (a colour view of the
#: same video, e.g. for contrastive pairs that must not be matched by colour)
CHANNEL_ORDERS: tuple[str, ...] = ("rgb", "rbg", "grb", "gbr", "brg", "bgr")

# names become one path component; "_" is allowed (split names like train_split1)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def format_fps(fps: float | int | str) -> str:
    """2 -> "2", 2.0 -> "2", 0.5 -> "0.5": the canonical spelling the shell script requires."""
    try:
        value = float(fps)
    except (TypeError, ValueError):
        raise ValueError(f"fps must be a positive number, got {fps!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    return str(int(value)) if value.is_integer() else repr(value)


def store_name(tokenizer: str, dataset: str, split: str, fps: float | int | str, hflip: bool | int,
               shorter_side: int, crop_type: str, crop_size: int) -> str:
    """The directory name of the token store for one extraction setting."""
    for what, value in (("tokenizer", tokenizer), ("dataset", dataset), ("split", split)):
        if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
            raise ValueError(f"{what} must be a name of letters, digits, '_', '.', '-', got {value!r}")
    if hflip not in (0, 1):  # True/False compare equal to 1/0
        raise ValueError(f"hflip must be 0/1 or a bool, got {hflip!r}")
    for what, value in (("shorter_side", shorter_side), ("crop_size", crop_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{what} must be a positive int, got {value!r}")
    if crop_type not in CROP_TYPES or crop_type == "none":
        raise ValueError(f"crop_type must be top, center or bottom in a store name, got {crop_type!r}")
    return (f"{tokenizer}_{dataset}_{split}_fps{format_fps(fps)}_hflip{int(hflip)}_"
            f"{shorter_side}{crop_type}{crop_size}")
