"""Readers for the video annotation formats users already have, all returning one `Annotations`.

The formats are the ones MMAction2's data tools and the datasets' own releases use
(tools/data/<dataset> in MMAction2): `relpath label` lists, the UCF101 and HMDB51 official
split files, SSv2 JSON, Kinetics CSV, Diving48 JSON, and a plain folder of videos.

Contract
--------
- Every item is keyed by its path relative to the video root (posix separators), which must
  stay inside the root after resolving `..` and symlinks. Escaping paths are skipped with a
  reason (one bad line does not stop a million-video job).
- Labels are class indices in [0, num_classes), -1 when unlabeled; a label that does not fit
  the stores' int32 is skipped with a reason.
- A line/record that cannot be interpreted, an unknown label, an escaping path or a duplicate
  id is *skipped* and recorded in `Annotations.skipped` with its "file:line" and a reason.
- One file under two names (a symlinked directory or file, a hard link: the same st_dev and
  st_ino once links are followed) is one video: the first name in list order is kept, every
  later one is skipped with kind "same_file" and `same_as` naming the kept id, so a list can
  neither store a video twice nor leak it between splits through a second name.
- An unreadable or invalid file (missing, not UTF-8, bad JSON, bad CSV header, bad class
  index) raises `AnnotationError` naming the file (and line when known): the whole list is
  untrustworthy then.
- Video files are not checked for existence (extraction reports those per video), except in
  "folder" mode, which lists what exists; a file that cannot be stat'ed has no identity and is
  never taken for another.

Format names and options (pass options as keyword arguments, or inside the format string:
`"hmdb51:subset=train,split=1"`, which is how command-line tools forward them):

- "list": MMAction2 lists, `relpath label` (0-based) per line, or `relpath` alone (unlabeled).
  Whether a file is labeled is decided by its first entry; blank lines and `#` comments are
  ignored; unlabeled paths may contain spaces. With `label_names`, the label column may hold
  class names instead of indices (mapped through them). Without, a class name there is
  skipped with a reason (recognised when `relpath` exists but `relpath name` does not).
  Refused as a whole file (`AnnotationError` naming file:line), since reading them as paths
  with spaces would only fail later as missing videos:
  MMAction2 multi-label lists (`relpath l1 l2 ...`): the stores hold one int32 label per video,
  and a multi-hot label set would change the store format, the fine-tuning loss and its
  metrics; keeping the lines that happen to have one label would silently bias the set.
  MMAction2 raw-frame lists (`frame_dir total_frames label`, also its raw-video
  `video_dir label num_clips ...`): extraction decodes video files, not frame folders.
- "ucf101": `trainlistNN.txt` (`relpath label`, 1-based) and `testlistNN.txt` (`relpath`,
  label from the folder name) with `classInd.txt` (`index name`, 1-based). classInd.txt is
  taken from the files given, option `class_index=PATH`, or found next to the list.
  A trainlist label that disagrees with its folder is skipped.
- "hmdb51": the official `<class>_test_split<k>.txt` files (or a directory holding them);
  lines `<video>.avi <0|1|2>` (1 train, 2 test, 0 unused). Options: `subset` ("train" or
  "test"/"val", required) and `split` (needed when the files cover several splits).
  Videos are `<class>/<video>.avi`; class index = sorted class names of the files read.
- "ssv2": `something-something-v2-{train,validation,test}.json` with
  `something-something-v2-labels.json` (from the files, option `labels_file=PATH`, or next to
  the list). Class = template without `[` `]`; records without a template are unlabeled.
  Videos are `<id>.<video_ext>` (option `video_ext`, default "webm").
- "kinetics": CSV with header `label,youtube_id,time_start,time_end,split[,is_cc]` (label
  column optional: unlabeled). Videos are `path_pattern` formatted with fields {label},
  {label_underscore} (spaces -> _), {youtube_id}, {time_start}, {time_end}, {ext}. Option
  `layout`: "class_folders" (default, `{label}/{youtube_id}_{time_start:06d}_{time_end:06d}.{ext}`)
  or "flat" (`{youtube_id}_{time_start:06d}_{time_end:06d}.{ext}`); `video_ext` (default
  "mp4"). Class index = sorted unique labels of the files read, or of option
  `classes_file=PATH` (a Kinetics CSV or one name per line), or the `label_names` argument;
  use one of the latter two for val/test so indices match training.
- "diving48": `Diving48_V2_{train,test}.json` (records with vid_name, label, start_frame,
  end_frame); videos `<vid_name>.<video_ext>` (default "mp4"). The vocabulary
  `Diving48_vocab.json` (from the files, option `vocab_file=PATH`, or next to the list) is
  optional; with it, labels outside it are skipped.
- "folder": every file with a video extension (option `extensions`, a tuple or "mp4;webm")
  under the given directories (default: the video root), recursively, sorted, unlabeled.
  Hidden files and directories (name starting with ".") are ignored.

Auto-detection (`fmt="auto"`), per file, all files must agree:
no files -> "folder"; a directory holding `*_test_split<k>.txt` -> "hmdb51", any other
directory -> "folder"; `classInd.txt`/`trainlistNN.txt`/`testlistNN.txt` -> "ucf101";
`<class>_test_split<k>.txt` -> "hmdb51"; `*.csv` -> "kinetics"; `*.json` whose name mentions
something-something/sthv2/ssv2 -> "ssv2", diving48 -> "diving48", otherwise by content (a
record key "vid_name" or a list of lists -> "diving48"; "template"/"id" or a top-level object
-> "ssv2"; MMAction2's raw-frame/raw-video/video JSON and ActivityNet-style JSON are refused
naming the format); anything else -> "list" (MMAction2 lists are 0-based, unlike the UCF101 files).
"""
from __future__ import annotations

import csv
import io
import json
import os
import posixpath
import re
import stat
from dataclasses import dataclass
from typing import Any, Callable

FORMATS = ("auto", "list", "ucf101", "hmdb51", "ssv2", "kinetics", "diving48", "folder")

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".flv", ".mpg", ".mpeg",
                    ".wmv", ".3gp", ".ogv", ".ts")

# options each format accepts (checked before parsing so a typo is a clear error)
FORMAT_OPTIONS: dict[str, tuple[str, ...]] = {
    "list": (),
    "ucf101": ("class_index",),
    "hmdb51": ("subset", "split"),
    "ssv2": ("labels_file", "video_ext"),
    "kinetics": ("layout", "path_pattern", "classes_file", "video_ext"),
    "diving48": ("vocab_file", "video_ext"),
    "folder": ("extensions",),
}

KINETICS_LAYOUTS = {
    "class_folders": "{label}/{youtube_id}_{time_start:06d}_{time_end:06d}.{ext}",
    "flat": "{youtube_id}_{time_start:06d}_{time_end:06d}.{ext}",
}

_INT_RE = re.compile(r"-?[0-9]+")
_TRAILING_INTS_RE = re.compile(r"(\s+-?[0-9]+)+$")
LABEL_MAX = 2 ** 31 - 1  # labels are stored as int32
_HMDB_RE = re.compile(r"(?P<cls>.+)_test_split(?P<k>[0-9]+)\.txt")
_UCF_RE = re.compile(r"(classind|trainlist[0-9]+|testlist[0-9]+)\.txt", re.IGNORECASE)
_WS_RE = re.compile(r"[ \t\n\r]*")
SAME_FILE = "same_file"  # Skipped.kind of a later name of a listed file


class AnnotationError(ValueError):
    """An annotation file cannot be trusted as a whole (missing, unreadable, invalid)."""


@dataclass(frozen=True)
class VideoItem:
    video_id: str  # the relpath under the video root, posix separators (unique key)
    path: str      # absolute path = video_root / relpath (resolved; inside the root)
    label: int     # class index, -1 when unlabeled
    source: str    # "file:line" where the item came from (for error messages)


@dataclass(frozen=True)
class Skipped:
    source: str          # "file:line"
    video_id: str | None
    reason: str
    kind: str = "annotation"     # or SAME_FILE: another listed name of a file already listed
    same_as: str | None = None   # kind "same_file": the id the file is kept under


@dataclass
class Annotations:
    items: list[VideoItem]
    skipped: list[Skipped]
    label_names: list[str] | None  # index -> class name, when the format provides names
    format: str

    @property
    def num_classes(self) -> int | None:
        return None if self.label_names is None else len(self.label_names)

    def summary(self) -> str:
        labeled = sum(1 for it in self.items if it.label >= 0)
        classes = "" if self.label_names is None else f", {len(self.label_names)} classes"
        return (f"{self.format}: {len(self.items)} videos ({labeled} labeled{classes}), "
                f"{len(self.skipped)} skipped")


# ----------------------------------------------------------------------------- public API

def parse_format_spec(spec: str) -> tuple[str, dict[str, str]]:
    """"hmdb51:subset=train,split=1" -> ("hmdb51", {"subset": "train", "split": "1"}).

    Values stay strings (parsers convert what they need); a value may not contain ",".
    """
    name, _, rest = spec.partition(":")
    name = name.strip().lower()
    options: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"bad annotation format option {part!r} in {spec!r}; expected key=value")
        options[key.strip()] = value.strip()
    return name, options


def detect_format(files: list[str]) -> str:
    """The format name for `files` by the rules in the module docstring."""
    if not files:
        return "folder"
    found: dict[str, list[str]] = {}
    for f in files:
        found.setdefault(_detect_one(os.fspath(f)), []).append(os.fspath(f))
    if len(found) > 1:
        detail = "; ".join(f"{fmt}: {', '.join(fs)}" for fmt, fs in found.items())
        raise AnnotationError(f"annotation files look like different formats ({detail}); pass the format explicitly")
    return next(iter(found))


def read_annotations(files: list[str], video_root: str, fmt: str = "auto",
                     label_names: list[str] | None = None, **format_options: Any) -> Annotations:
    """Read annotation `files` (concatenated in order) for videos under `video_root`.

    `fmt` is one of FORMATS, optionally with options ("kinetics:layout=flat"); keyword
    `format_options` add to those. See the module docstring for formats and options.
    """
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    files = [os.fspath(f) for f in files]
    name, spec_options = parse_format_spec(fmt)
    clash = set(spec_options) & set(format_options)
    if clash:
        raise ValueError(f"option(s) {sorted(clash)} given both in fmt={fmt!r} and as keyword arguments")
    options = {**spec_options, **format_options}
    if name not in FORMATS:
        raise ValueError(f"unknown annotation format {name!r}; expected one of {FORMATS}")
    if name == "auto":
        name = detect_format(files)
    unknown = set(options) - set(FORMAT_OPTIONS[name])
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for annotation format {name!r} "
                         f"(known: {list(FORMAT_OPTIONS[name]) or 'none'})")
    if not os.path.isdir(video_root):
        raise AnnotationError(f"{video_root}: video root is not a directory")
    if name != "folder" and not files:
        raise AnnotationError(f"no annotation files given for format {name!r}")
    if label_names is not None:
        label_names = [str(n) for n in label_names]
    col = _Collector(video_root)
    names = _PARSERS[name](files, col, label_names, **options)
    return Annotations(items=col.items, skipped=col.skipped, label_names=names, format=name)


def same_file_lines(same_file: dict[str, str], limit: int = 10) -> list[str]:
    """What a summary says about names of one file: {later name: kept id} -> lines (the first `limit` pairs)."""
    if not same_file:
        return []
    lines = [f"{len(same_file)} listed name(s) are the same file as an earlier name (symlink or hard link), "
             f"stored once under the earlier one:"]
    lines += [f"  {dup} = {kept}" for dup, kept in list(same_file.items())[:limit]]
    if len(same_file) > limit:
        lines.append(f"  ... and {len(same_file) - limit} more (stage same_file in the store's errors.jsonl)")
    return lines


# ----------------------------------------------------------------------------- collection

class _Collector:
    """Validates paths and labels, de-duplicates ids, keeps items and skips in order."""

    def __init__(self, video_root: str):
        self.root_given = os.path.abspath(video_root)
        self.root = os.path.realpath(video_root)
        self.num_classes: int | None = None
        self.items: list[VideoItem] = []
        self.skipped: list[Skipped] = []
        self._first_source: dict[str, str] = {}
        self._first_file: dict[tuple[int, int], VideoItem] = {}  # (st_dev, st_ino) -> the item kept for it
        # resolved parent directories: millions of videos share few directories
        self._dirs: dict[str, tuple[str | None, bool]] = {}

    def skip(self, source: str, video_id: str | None, reason: str) -> None:
        self.skipped.append(Skipped(source=source, video_id=video_id, reason=reason))

    def add(self, relpath: str, label: int, source: str) -> None:
        rel, path_or_reason, file_id = self._resolve(relpath)
        if rel is None:
            self.skip(source, relpath, path_or_reason)
            return
        if label > LABEL_MAX:
            self.skip(source, rel, f"label {label} does not fit the stored int32 (at most {LABEL_MAX})")
            return
        if label != -1 and (label < 0 or (self.num_classes is not None and label >= self.num_classes)):
            self.skip(source, rel, f"unknown label {label} (expected 0..{(self.num_classes or 0) - 1})"
                      if self.num_classes is not None else f"unknown label {label}")
            return
        first = self._first_source.get(rel)
        if first is not None:
            self.skip(source, rel, f"duplicate id (first at {first})")
            return
        kept = self._first_file.get(file_id) if file_id is not None else None
        if kept is not None:
            self.skipped.append(Skipped(
                source=source, video_id=rel, kind=SAME_FILE, same_as=kept.video_id,
                reason=f"the same file as {kept.video_id!r} (first at {kept.source}) through a symlink or hard "
                       f"link: stored once, under that id"))
            return
        item = VideoItem(video_id=rel, path=path_or_reason, label=label, source=source)
        self._first_source[rel] = source
        if file_id is not None:
            self._first_file[file_id] = item
        self.items.append(item)

    def _inside(self, path: str) -> bool:
        return self.root == "/" or path.startswith(self.root + "/")

    def _resolve(self, raw: str) -> tuple[str | None, str, tuple[int, int] | None]:
        """relpath as written -> (normalized relpath, resolved absolute path, file identity) or (None, reason, None).

        The identity is (st_dev, st_ino) after following links, None when the file cannot be stat'ed."""
        if not raw or "\x00" in raw:
            return None, "malformed path (empty or NUL byte)", None
        if raw[0] == "/":
            norm = posixpath.normpath(raw)
            for base in (self.root_given, self.root):
                prefix = base.rstrip("/") + "/"
                if norm.startswith(prefix):
                    rel = norm[len(prefix):]
                    break
            else:
                return None, "path escapes the video root (absolute path outside it)", None
        elif raw[0] == "." or raw[-1] == "/" or "//" in raw or "/." in raw:
            rel = posixpath.normpath(raw)
        else:
            rel = raw  # already normal: the common case, kept cheap for million-line lists
        if rel in (".", "..") or rel.startswith("../") or rel.startswith("/"):
            return None, "path escapes the video root", None
        parent, _, name = rel.rpartition("/")
        entry = self._dirs.get(parent)
        if entry is None:
            entry = self._dirs[parent] = self._parent_entry(parent)
        prefix, exists = entry
        if prefix is None:
            return None, "path escapes the video root (through a symlinked directory)", None
        full = prefix + name
        if not exists:  # a file can only exist (or be a symlink) if its directory does: skip the stat
            return rel, full, None
        try:
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                full = os.path.realpath(full)
                if not self._inside(full):
                    return None, "path escapes the video root (symlink)", None
                st = os.stat(full)
        except OSError:  # missing (extraction reports it) or unreadable: no identity
            return rel, full, None
        # st_ino 0: a file system without stable inode numbers, where identity cannot be told
        return rel, full, (st.st_dev, st.st_ino) if st.st_ino else None

    def _parent_entry(self, parent: str) -> tuple[str | None, bool]:
        """(resolved directory + "/", exists), or (None, False) when it resolves outside the root."""
        real = os.path.realpath(os.path.join(self.root, parent)) if parent else self.root
        if real != self.root and not self._inside(real):
            return None, False
        return (real if real.endswith("/") else real + "/"), os.path.isdir(real)


# ----------------------------------------------------------------------------- file reading

def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise AnnotationError(f"{path}: annotation file not found") from None
    except OSError as e:
        raise AnnotationError(f"{path}: cannot read annotation file ({e.strerror})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise AnnotationError(f"{path}:{line}: not UTF-8 text ({e.reason})") from None


def _numbered_lines(path: str):
    """(line number, stripped line) for non-blank, non-comment lines; split on \\n only so
    line numbers agree with editors and `sed -n`."""
    for lineno, line in enumerate(_read_text(path).split("\n"), 1):
        s = line.strip()
        if s and not s.startswith("#"):
            yield lineno, s


def _load_json(path: str) -> Any:
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None


def _json_records(path: str) -> tuple[list[tuple[int, Any]] | None, Any]:
    """A top-level JSON list as [(line where the record starts, record)], else (None, object).

    Decoding element by element keeps each record's line number for error messages.
    """
    text = _read_text(path)
    i = _WS_RE.match(text, 0).end()
    if i >= len(text) or text[i] != "[":
        return None, _load_json(path)
    decoder = json.JSONDecoder()
    records: list[tuple[int, Any]] = []
    line, counted_to = 1, 0

    def fail(pos: int, msg: str) -> AnnotationError:
        return AnnotationError(f"{path}:{text.count(chr(10), 0, pos) + 1}: invalid JSON ({msg})")

    i = _WS_RE.match(text, i + 1).end()
    if i < len(text) and text[i] == "]":
        i += 1
    else:
        while True:
            try:
                rec, end = decoder.raw_decode(text, i)
            except json.JSONDecodeError as e:
                raise AnnotationError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
            line += text.count("\n", counted_to, i)
            counted_to = i
            records.append((line, rec))
            i = _WS_RE.match(text, end).end()
            if i < len(text) and text[i] == ",":
                i = _WS_RE.match(text, i + 1).end()
                continue
            if i < len(text) and text[i] == "]":
                i += 1
                break
            raise fail(i, "expected ',' or ']'")
    if _WS_RE.match(text, i).end() != len(text):
        raise fail(i, "extra data after the list")
    return records, None


def _sibling(files: list[str], name: str) -> str | None:
    """`name` next to the first of `files` that has one (formats whose lists refer to a class file)."""
    for f in files:
        candidate = os.path.join(os.path.dirname(f), name)
        if os.path.isfile(candidate):
            return candidate
    return None


def _check_names(given: list[str] | None, found: list[str], source: str) -> None:
    if given is not None and given != found:
        raise AnnotationError(f"label_names given ({len(given)} names) disagree with {source} ({len(found)} names)")


def _as_int(text: str) -> int | None:
    """'12' or '12.0' -> 12; anything else -> None."""
    text = text.strip()
    if _INT_RE.fullmatch(text):
        return int(text)
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


# ----------------------------------------------------------------------------- formats

def _parse_list(files: list[str], col: _Collector, label_names: list[str] | None) -> list[str] | None:
    col.num_classes = None if label_names is None else len(label_names)
    by_name = {n: i for i, n in enumerate(label_names or [])}
    spaced = sorted((n for n in by_name if any(c.isspace() for c in n)), key=len, reverse=True)
    for f in files:
        labeled: bool | None = None
        for lineno, s in _numbered_lines(f):
            src = f"{f}:{lineno}"
            parts = s.rsplit(None, 1)
            has_label = len(parts) == 2 and _INT_RE.fullmatch(parts[1]) is not None
            if has_label:
                _refuse_other_list_kinds(col, src, s, parts[0])
            named = None if has_label else _class_name_column(s, parts, by_name, spaced)
            if named is None and not has_label and label_names is None and _looks_named(col, s, parts):
                col.skip(src, parts[0], f"{parts[1]!r} in the label column is a class name but no label map was "
                                        f"given: pass --label-names FILE (one class name per line, line i = label i)")
                continue
            if labeled is None:
                labeled = has_label or named is not None
            if labeled and not has_label and named is None:
                col.skip(src, None, f"malformed line: expected 'relpath label' (the list's first entry has a label), got {s!r}")
            elif not labeled and (has_label or named is not None):
                col.skip(src, None, f"malformed line: a label in an unlabeled list (the first entry has none): {s!r}")
            elif named is not None:
                col.add(named[0], by_name[named[1]], src)
            elif labeled:
                label = int(parts[1])
                if label < 0:
                    col.skip(src, parts[0], f"unknown label {label}")
                else:
                    col.add(parts[0], label, src)
            else:
                col.add(s, -1, src)
    return label_names


def _refuse_other_list_kinds(col: _Collector, src: str, line: str, head: str) -> None:
    """Raise when a `relpath label` line is really an MMAction2 multi-label or raw-frame line.

    `head` is the line minus its last integer. A multi-label line (`test.mp4 0 3`) or a
    raw-frame line (`imgs 5 127`: frame_dir total_frames label) would otherwise be read as a
    video path with a space in it ("test.mp4 0") and fail much later as a missing file.
    """
    words = head.rsplit(None, 1)
    multi = len(words) == 2 and _INT_RE.fullmatch(words[1]) is not None
    if not multi and os.path.splitext(head)[1].lower() in VIDEO_EXTENSIONS:
        return  # the common case: `relpath.mp4 label`, no stat needed
    if os.path.isfile(os.path.join(col.root, head)) or os.path.isfile(os.path.join(col.root, line)):
        return  # a real file whose name has spaces and digits in it
    path = _TRAILING_INTS_RE.sub("", line) or line  # the line without all its integer columns
    frames_dir = (os.path.splitext(path)[1].lower() not in VIDEO_EXTENSIONS
                  or os.path.isdir(os.path.join(col.root, path)))
    if frames_dir and (multi or os.path.isdir(os.path.join(col.root, head))):
        raise AnnotationError(
            f"{src}: {line!r} looks like an MMAction2 raw-frame list ('frame_dir total_frames label'); "
            "raw-frame lists are not supported: extraction decodes video files, so list the videos "
            "themselves ('relpath label' per line)")
    if multi:
        raise AnnotationError(
            f"{src}: multi-label lists are not supported ('relpath label1 label2 ...', got {line!r}): "
            "the token stores hold one int32 label per video; write one label per video "
            "('relpath label' per line)")


def _class_name_column(line: str, parts: list[str], by_name: dict[str, int],
                       spaced: list[str]) -> tuple[str, str] | None:
    """(relpath, class name) when the line ends in a class name of the label map."""
    if len(parts) == 2 and parts[1] in by_name:
        return parts[0], parts[1]
    for name in spaced:  # names with spaces ("playing guitar"): the longest that ends the line
        if line.endswith(name) and len(line) > len(name) and line[-len(name) - 1].isspace():
            rel = line[:-len(name)].rstrip()
            if rel:
                return rel, name
    return None


def _looks_named(col: _Collector, line: str, parts: list[str]) -> bool:
    """`relpath word` where relpath is a file and the whole line is not: a class name in the label column."""
    if len(parts) != 2 or os.path.isabs(parts[0]) or ".." in parts[0].split("/"):
        return False
    return os.path.isfile(os.path.join(col.root, parts[0])) and not os.path.exists(os.path.join(col.root, line))


def _read_ucf_class_index(path: str) -> list[str]:
    by_index: dict[int, str] = {}
    for lineno, s in _numbered_lines(path):
        parts = s.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise AnnotationError(f"{path}:{lineno}: expected 'index ClassName', got {s!r}")
        index = int(parts[0])
        if index in by_index:
            raise AnnotationError(f"{path}:{lineno}: class index {index} given twice")
        by_index[index] = parts[1]
    if sorted(by_index) != list(range(1, len(by_index) + 1)):
        raise AnnotationError(f"{path}: class indices must be 1..{len(by_index)} (1-based, no gaps)")
    names = [by_index[i] for i in range(1, len(by_index) + 1)]
    if len(set(names)) != len(names):
        raise AnnotationError(f"{path}: a class name appears twice")
    return names


def _parse_ucf101(files: list[str], col: _Collector, label_names: list[str] | None,
                  class_index: str | None = None) -> list[str]:
    class_files = [f for f in files if os.path.basename(f).lower() == "classind.txt"]
    lists = [f for f in files if os.path.basename(f).lower() != "classind.txt"]
    if class_index is not None:
        class_files.insert(0, class_index)
    class_files = list(dict.fromkeys(class_files))
    if len(class_files) > 1:
        raise AnnotationError(f"several UCF101 class index files given: {class_files}")
    if not class_files:
        sibling = _sibling(lists, "classInd.txt")
        if sibling is not None:
            class_files = [sibling]
    if class_files:
        names = _read_ucf_class_index(class_files[0])
        _check_names(label_names, names, class_files[0])
        where = os.path.basename(class_files[0])
    elif label_names is not None:
        names, where = label_names, "label_names"
    else:
        raise AnnotationError(f"{lists[0] if lists else files[0]}: UCF101 lists need classInd.txt "
                              "(not found next to the list; pass class_index=PATH)")
    to_index = {n: i for i, n in enumerate(names)}
    # folder names differ in case from classInd in a few releases (HandStandPushups)
    to_index_lower = {n.lower(): i for i, n in enumerate(names)}
    col.num_classes = len(names)
    for f in lists:
        for lineno, s in _numbered_lines(f):
            src = f"{f}:{lineno}"
            parts = s.split()
            if len(parts) > 2 or (len(parts) == 2 and not _INT_RE.fullmatch(parts[1])):
                col.skip(src, None, f"malformed line: expected 'relpath [label]', got {s!r}")
                continue
            rel = parts[0]
            folder = rel.split("/", 1)[0] if "/" in rel else None
            folder_index = None if folder is None else to_index.get(folder, to_index_lower.get(folder.lower()))
            if len(parts) == 2:
                label = int(parts[1]) - 1  # the official lists are 1-based
                if not 0 <= label < len(names):
                    col.skip(src, rel, f"unknown label {parts[1]} ({where} has 1..{len(names)})")
                    continue
                if folder_index is not None and folder_index != label:
                    col.skip(src, rel, f"label {parts[1]} ({names[label]}) disagrees with the folder "
                                       f"{folder!r} (class {folder_index + 1} in {where})")
                    continue
            else:
                if folder_index is None:
                    col.skip(src, rel, f"unknown label {folder!r} (the folder is not a class in {where})")
                    continue
                label = folder_index
            col.add(rel, label, src)
    return names


def _hmdb_files(files: list[str]) -> list[str]:
    out: list[str] = []
    for f in files:
        if os.path.isdir(f):
            found = sorted(n for n in os.listdir(f) if _HMDB_RE.fullmatch(n))
            if not found:
                raise AnnotationError(f"{f}: no HMDB51 split files (<class>_test_split<k>.txt) in this directory")
            out.extend(os.path.join(f, n) for n in found)
        elif _HMDB_RE.fullmatch(os.path.basename(f)):
            out.append(f)
        else:
            raise AnnotationError(f"{f}: not an HMDB51 split file name (<class>_test_split<k>.txt)")
    return out


def _parse_hmdb51(files: list[str], col: _Collector, label_names: list[str] | None,
                  subset: str | None = None, split: int | str | None = None) -> list[str]:
    wanted = {"train": "1", "test": "2", "val": "2"}.get(str(subset).lower()) if subset is not None else None
    if wanted is None:
        raise AnnotationError(f"HMDB51 split files hold train and test together; pass subset='train' or "
                              f"subset='test' (got {subset!r})")
    parsed = [(f, _HMDB_RE.fullmatch(os.path.basename(f))) for f in _hmdb_files(files)]
    splits = sorted({int(m["k"]) for _, m in parsed})
    if split is not None:
        if str(split).strip() not in {str(k) for k in splits}:
            raise AnnotationError(f"no HMDB51 files for split {split} among the given files (splits found: {splits})")
        parsed = [(f, m) for f, m in parsed if int(m["k"]) == int(split)]
    elif len(splits) > 1:
        raise AnnotationError(f"the HMDB51 files cover splits {splits}; pass split=K")
    classes = sorted({m["cls"] for _, m in parsed})
    names = label_names if label_names is not None else classes
    to_index = {n: i for i, n in enumerate(names)}
    col.num_classes = len(names)
    for f, m in parsed:
        cls = m["cls"]
        for lineno, s in _numbered_lines(f):
            src = f"{f}:{lineno}"
            parts = s.rsplit(None, 1)
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                col.skip(src, None, f"malformed line: expected '<video>.avi <0|1|2>', got {s!r}")
                continue
            if parts[1] != wanted:
                continue  # the other subset, or unused (0): not part of this list
            rel = f"{cls}/{parts[0]}"
            if cls not in to_index:
                col.skip(src, rel, f"unknown label {cls!r} (not in label_names)")
                continue
            col.add(rel, to_index[cls], src)
    return names


def _read_ssv2_labels(path: str) -> dict[str, int]:
    obj = _load_json(path)
    if not isinstance(obj, dict):
        raise AnnotationError(f"{path}: SSv2 labels must be a JSON object {{template: index}}")
    out: dict[str, int] = {}
    for template, value in obj.items():
        index = _as_int(str(value))
        if index is None:
            raise AnnotationError(f"{path}: label index {value!r} of {template!r} is not an integer")
        out[template] = index
    if sorted(out.values()) != list(range(len(out))):
        raise AnnotationError(f"{path}: label indices must be 0..{len(out) - 1}, each once")
    return out


def _parse_ssv2(files: list[str], col: _Collector, label_names: list[str] | None,
                labels_file: str | None = None, video_ext: str = "webm") -> list[str] | None:
    label_files = [labels_file] if labels_file is not None else []
    lists: list[tuple[str, list[tuple[int, Any]]]] = []
    for f in files:
        records, obj = _json_records(f)
        if records is None:
            if isinstance(obj, dict):
                label_files.append(f)
            else:
                raise AnnotationError(f"{f}: expected a JSON list of SSv2 records or a labels object")
        else:
            lists.append((f, records))
    label_files = list(dict.fromkeys(label_files))
    if len(label_files) > 1:
        raise AnnotationError(f"several SSv2 label files given: {label_files}")
    if not label_files:
        sibling = _sibling([f for f, _ in lists], "something-something-v2-labels.json")
        if sibling is not None:
            label_files = [sibling]
    to_index: dict[str, int] | None = None
    names = label_names
    if label_files:
        to_index = _read_ssv2_labels(label_files[0])
        found = sorted(to_index, key=to_index.__getitem__)
        _check_names(label_names, found, label_files[0])
        names = found
    elif label_names is not None:
        to_index = {n: i for i, n in enumerate(label_names)}
    col.num_classes = None if names is None else len(names)
    ext = video_ext.lstrip(".")
    for f, records in lists:
        for lineno, rec in records:
            src = f"{f}:{lineno}"
            vid = rec.get("id") if isinstance(rec, dict) else None
            if isinstance(vid, int) and not isinstance(vid, bool):
                vid = str(vid)
            if not isinstance(vid, str) or not vid.strip():
                col.skip(src, None, "malformed record: expected an object with a string 'id'")
                continue
            rel = f"{vid.strip()}.{ext}"
            if "template" in rec:
                if to_index is None:
                    raise AnnotationError(f"{src}: labeled SSv2 record but no labels file (put "
                                          "something-something-v2-labels.json next to the list or pass labels_file=PATH)")
                template = rec["template"]
                if not isinstance(template, str):
                    col.skip(src, rel, "malformed record: 'template' is not a string")
                    continue
                key = template.replace("[", "").replace("]", "")
                label = to_index.get(key)
                if label is None:
                    col.skip(src, rel, f"unknown label {key!r}")
                    continue
            elif "label" in rec:
                col.skip(src, rel, "malformed record: has 'label' but no 'template' to map it to a class")
                continue
            else:
                label = -1
            col.add(rel, label, src)
    return names


def _kinetics_classes(path: str) -> list[str]:
    if path.lower().endswith(".csv"):
        rows = _read_kinetics_csv(path)
        labels = {label for _, label, *_ in rows if label}
        if not labels:
            raise AnnotationError(f"{path}: classes file has no labels")
        return sorted(labels)
    names = [s for _, s in _numbered_lines(path)]
    if len(set(names)) != len(names):
        raise AnnotationError(f"{path}: a class name appears twice")
    return names


def _read_kinetics_csv(path: str) -> list[tuple[str, str | None, str | None, int | None, int | None]]:
    """-> [(source, label or None, youtube_id, start, end)]; a malformed row has youtube_id None."""
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise AnnotationError(f"{path}: empty CSV (expected a header label,youtube_id,time_start,time_end,split)") from None
    except csv.Error as e:
        raise AnnotationError(f"{path}:1: invalid CSV ({e})") from None
    missing = [c for c in ("youtube_id", "time_start", "time_end") if c not in header]
    if missing:
        raise AnnotationError(f"{path}:1: Kinetics CSV header lacks {missing}; got {header}")
    col_label = header.index("label") if "label" in header else None
    col_id, col_start, col_end = (header.index(c) for c in ("youtube_id", "time_start", "time_end"))
    rows = []
    try:
        for row in reader:
            src = f"{path}:{reader.line_num}"
            if not any(cell.strip() for cell in row):
                continue
            if len(row) < len(header):
                rows.append((src, None, None, None, None))
                continue
            label = row[col_label].strip() if col_label is not None else ""
            rows.append((src, label or None, row[col_id].strip() or None,
                         _as_int(row[col_start]), _as_int(row[col_end])))
    except csv.Error as e:
        raise AnnotationError(f"{path}:{reader.line_num}: invalid CSV ({e})") from None
    return rows


def _parse_kinetics(files: list[str], col: _Collector, label_names: list[str] | None,
                    layout: str = "class_folders", path_pattern: str | None = None,
                    classes_file: str | None = None, video_ext: str = "mp4") -> list[str]:
    if path_pattern is None:
        if layout not in KINETICS_LAYOUTS:
            raise ValueError(f"unknown Kinetics layout {layout!r}; expected one of {list(KINETICS_LAYOUTS)}")
        path_pattern = KINETICS_LAYOUTS[layout]
    fields = dict(label="x", label_underscore="x", youtube_id="x", time_start=0, time_end=0, ext="x")
    try:
        path_pattern.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"bad Kinetics path_pattern {path_pattern!r} ({e!r}); fields: {sorted(fields)}") from None
    needs_label = "{label" in path_pattern
    rows = [r for f in files for r in _read_kinetics_csv(f)]
    if classes_file is not None:
        names = _kinetics_classes(classes_file)
        _check_names(label_names, names, classes_file)
    elif label_names is not None:
        names = label_names
    else:
        names = sorted({label for _, label, *_ in rows if label})
    to_index = {n: i for i, n in enumerate(names)}
    col.num_classes = len(names)
    ext = video_ext.lstrip(".")
    for src, label, yid, start, end in rows:
        if yid is None or start is None or end is None:
            col.skip(src, None, "malformed row: expected youtube_id and integer time_start, time_end")
            continue
        if label is None and needs_label:
            raise AnnotationError(f"{src}: row has no label but the video path pattern {path_pattern!r} needs one; "
                                  "use layout='flat' or a path_pattern without {label}")
        rel = path_pattern.format(label=label or "", label_underscore=(label or "").replace(" ", "_"),
                                  youtube_id=yid, time_start=start, time_end=end, ext=ext)
        if label is None:
            col.add(rel, -1, src)
        elif label not in to_index:
            col.skip(src, rel, f"unknown label {label!r}")
        else:
            col.add(rel, to_index[label], src)
    return names


def _diving48_vocab(obj: Any, path: str) -> list[str]:
    if not isinstance(obj, list) or not obj:
        raise AnnotationError(f"{path}: Diving48 vocabulary must be a non-empty JSON list")
    names = []
    for i, entry in enumerate(obj):
        if isinstance(entry, str):
            names.append(entry)
        elif isinstance(entry, list) and all(isinstance(e, str) for e in entry):
            names.append(" ".join(entry))
        else:
            raise AnnotationError(f"{path}: vocabulary entry {i} is neither a string nor a list of strings")
    return names


def _is_vocab(records: list[tuple[int, Any]]) -> bool:
    return bool(records) and isinstance(records[0][1], (list, str))


def _parse_diving48(files: list[str], col: _Collector, label_names: list[str] | None,
                    vocab_file: str | None = None, video_ext: str = "mp4") -> list[str] | None:
    vocabs: list[tuple[str, list[str]]] = []
    if vocab_file is not None:
        vocabs.append((vocab_file, _diving48_vocab(_load_json(vocab_file), vocab_file)))
    lists: list[tuple[str, list[tuple[int, Any]]]] = []
    for f in files:
        records, _ = _json_records(f)
        if records is None:
            raise AnnotationError(f"{f}: expected a JSON list of Diving48 records")
        if _is_vocab(records):
            vocabs.append((f, _diving48_vocab([r for _, r in records], f)))
        else:
            lists.append((f, records))
    if len({v for v, _ in vocabs}) > 1:
        raise AnnotationError(f"several Diving48 vocabulary files given: {[v for v, _ in vocabs]}")
    if not vocabs:
        sibling = _sibling([f for f, _ in lists], "Diving48_vocab.json")
        if sibling is not None:
            vocabs.append((sibling, _diving48_vocab(_load_json(sibling), sibling)))
    names = label_names
    if vocabs:
        _check_names(label_names, vocabs[0][1], vocabs[0][0])
        names = vocabs[0][1]
    col.num_classes = None if names is None else len(names)
    ext = video_ext.lstrip(".")
    for f, records in lists:
        for lineno, rec in records:
            src = f"{f}:{lineno}"
            name = rec.get("vid_name") if isinstance(rec, dict) else None
            if not isinstance(name, str) or not name.strip():
                col.skip(src, None, "malformed record: expected an object with a string 'vid_name'")
                continue
            rel = f"{name.strip()}.{ext}"
            label = rec.get("label", -1)
            if isinstance(label, str) and _INT_RE.fullmatch(label.strip()):
                label = int(label)
            if isinstance(label, bool) or not isinstance(label, int):
                col.skip(src, rel, f"malformed record: label {label!r} is not an integer")
                continue
            if "label" in rec and label < 0:
                col.skip(src, rel, f"unknown label {label}")
                continue
            col.add(rel, label, src)
    return names


def _parse_folder(files: list[str], col: _Collector, label_names: list[str] | None,
                  extensions: tuple[str, ...] | str = VIDEO_EXTENSIONS) -> list[str] | None:
    if isinstance(extensions, str):  # from a format string: "mp4;webm"
        extensions = tuple(e for e in re.split(r"[;\s]+", extensions) if e)
    exts = {("." + e.lstrip(".")).lower() for e in extensions}
    dirs = files or [col.root]
    for d in dirs:
        if not os.path.isdir(d):
            raise AnnotationError(f"{d}: not a directory (folder mode scans directories of videos)")
        real = os.path.realpath(d)
        if real != col.root and not col._inside(real):
            raise AnnotationError(f"{d}: directory is outside the video root {col.root_given}")
        found: list[str] = []
        visited = {real}
        for dirpath, dirnames, filenames in os.walk(real, followlinks=True):
            keep = []
            for sub in sorted(dirnames):
                if sub.startswith("."):
                    continue
                sub_real = os.path.realpath(os.path.join(dirpath, sub))
                if sub_real != col.root and not col._inside(sub_real):
                    col.skip(os.path.join(dirpath, sub), None, "path escapes the video root (symlinked directory)")
                elif sub_real in visited:
                    continue  # a symlink loop or a second link to a directory already listed
                else:
                    visited.add(sub_real)
                    keep.append(sub)
            dirnames[:] = keep
            rel_dir = os.path.relpath(dirpath, col.root)
            for name in filenames:
                if not name.startswith(".") and os.path.splitext(name)[1].lower() in exts:
                    found.append(name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/"))
        for rel in sorted(found):
            col.add(rel, -1, os.path.join(col.root, rel))
    return label_names


_PARSERS: dict[str, Callable[..., list[str] | None]] = {
    "list": _parse_list,
    "ucf101": _parse_ucf101,
    "hmdb51": _parse_hmdb51,
    "ssv2": _parse_ssv2,
    "kinetics": _parse_kinetics,
    "diving48": _parse_diving48,
    "folder": _parse_folder,
}


def _detect_one(path: str) -> str:
    if os.path.isdir(path):
        has_splits = any(_HMDB_RE.fullmatch(n) for n in os.listdir(path))
        return "hmdb51" if has_splits else "folder"
    name = os.path.basename(path)
    lower = name.lower()
    if _UCF_RE.fullmatch(name):
        return "ucf101"
    if _HMDB_RE.fullmatch(name):
        return "hmdb51"
    if lower.endswith(".csv"):
        return "kinetics"
    if lower.endswith(".json"):
        if any(k in lower for k in ("something-something", "sthv2", "ssv2")):
            return "ssv2"
        if "diving48" in lower:
            return "diving48"
        head = _read_text(path)[:4096]
        stripped = head.lstrip()
        if '"vid_name"' in head or re.match(r"\[\s*\[", stripped):
            return "diving48"
        other = _other_json_format(head)
        if other is not None:
            raise AnnotationError(f"{path}: {other} annotations are not supported; list the videos in a "
                                  "'relpath label' text file (MMAction2's video list format) instead")
        if stripped.startswith("{") or '"template"' in head or '"id"' in head:
            return "ssv2"
        raise AnnotationError(f"{path}: cannot tell which JSON annotation format this is; pass the format explicitly")
    return "list"


# JSON annotation formats we recognise only to refuse them by name (keys of their records)
_OTHER_JSON = (
    ('"frame_dir"', "MMAction2 raw-frame JSON (records with frame_dir, total_frames)"),
    ('"video_dir"', "MMAction2 raw-video JSON (records with video_dir, num_clips, positive_clip_inds)"),
    ('"filename"', "MMAction2 video JSON (records with filename, label)"),
    ('"duration_second"', "ActivityNet-style temporal JSON (videos with annotated segments)"),
)


def _other_json_format(head: str) -> str | None:
    for key, name in _OTHER_JSON:
        if key in head:
            return name
    return None
