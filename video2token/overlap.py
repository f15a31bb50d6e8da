"""Videos two token stores share (a train and a test split, say): by file content, else by resolved path.

Every video stored since issue 20 records its file's fingerprint (size + SHA-256 of its bytes,
`checksum.file_fingerprint`) and resolved path. Two videos are shared when both fingerprints
are known and equal: the same bytes, wherever the file was copied to and whatever it is called.
Where either side has no fingerprint (a store made before they were recorded), the resolved
paths are compared instead: the recorded one, else the store's video root joined with the id and
resolved now. That misses copies and renamed files, and the result says so in its notes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from .store import TokenStore

CONTENT, PATH = "content", "path"


@dataclass(frozen=True)
class SharedVideo:
    video_id: str        # in the first store
    other_video_id: str  # in the other store
    by: str              # CONTENT or PATH


@dataclass
class Overlap:
    shared: list[SharedVideo] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def by(self, how: str) -> int:
        return sum(1 for s in self.shared if s.by == how)


def _entries(store: TokenStore) -> tuple[list[tuple[str, str, str | None]], int]:
    """[(video id, resolved path, fingerprint or None)], and how many paths were resolved now (not recorded)."""
    out, guessed = [], 0
    root = store.meta.get("video_root") or ""
    for vid, path, fp in store.sources():
        if path is None:
            path = os.path.realpath(os.path.join(root, vid))
            guessed += 1
        out.append((vid, path, fp))
    return out, guessed


def shared_videos(store: TokenStore, other: TokenStore) -> Overlap:
    """The videos of `store` that `other` holds too, in `store`'s order (one line per pair)."""
    mine, mine_guessed = _entries(store)
    theirs, theirs_guessed = _entries(other)
    by_print: dict[str, list[str]] = {}
    by_path: dict[str, list[tuple[str, str | None]]] = {}
    for vid, path, fp in theirs:
        if fp is not None:
            by_print.setdefault(fp, []).append(vid)
        by_path.setdefault(path, []).append((vid, fp))
    result = Overlap()
    for vid, path, fp in mine:
        pairs = [(o, CONTENT) for o in by_print.get(fp, [])] if fp is not None else []
        # a path match counts only where a fingerprint is missing on either side (equal prints are found above)
        pairs += [(o, PATH) for o, ofp in by_path.get(path, []) if fp is None or ofp is None]
        result.shared += [SharedVideo(vid, o, how) for o, how in pairs]
    for s, entries, guessed in ((store, mine, mine_guessed), (other, theirs, theirs_guessed)):
        missing = sum(1 for _, _, fp in entries if fp is None)
        if missing:
            result.notes.append(
                f"{s.path}: {missing} of {len(entries)} videos have no content fingerprint (stored before fingerprints were "
                f"recorded): those are compared by resolved path"
                + (f" ({guessed} taken as the video root + id, resolved now)" if guessed else "")
                + ", which misses copies and renamed files; re-extract the store to compare by content")
    return result
