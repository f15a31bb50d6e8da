"""Annotation readers (video2token.annotations), store naming and the extraction shell script."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from video2token.annotations import (AnnotationError, Annotations, detect_format, parse_format_spec,
                                     read_annotations)
from video2token.naming import format_fps, store_name

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "video2token" / "scripts" / "extract_tokens.sh"


def write(path: Path, text: str | bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return str(path)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "videos"
    r.mkdir()
    return r


def reasons(ann: Annotations) -> list[str]:
    return [s.reason for s in ann.skipped]


# ----------------------------------------------------------------------------- MMAction2 lists

def test_list_labeled(tmp_path, root):
    f = write(tmp_path / "ucf101_train_split_1_videos.txt",
              "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 0\n\n# comment\nArchery/v_Archery_g01_c01.avi 2\n")
    ann = read_annotations([f], str(root))
    assert ann.format == "list"
    assert [(it.video_id, it.label, it.source) for it in ann.items] == [
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", 0, f"{f}:1"),
        ("Archery/v_Archery_g01_c01.avi", 2, f"{f}:4"),
    ]
    assert ann.items[0].path == os.path.join(os.path.realpath(root), "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi")
    assert ann.skipped == [] and ann.label_names is None


def test_list_unlabeled_and_inconsistent_lines(tmp_path, root):
    f = write(tmp_path / "corpus.txt", "a/my video.mp4\nb.mp4\nc.mp4 3\n")
    ann = read_annotations([f], str(root), fmt="list")
    assert [(it.video_id, it.label) for it in ann.items] == [("a/my video.mp4", -1), ("b.mp4", -1)]
    assert ann.skipped[0].source == f"{f}:3" and "unlabeled list" in ann.skipped[0].reason


def test_list_malformed_and_unknown_labels(tmp_path, root):
    f = write(tmp_path / "l.txt", "a.mp4 0\nb.mp4\nc.mp4 5\nd.mp4 -2\ne.mp4 1\n")
    ann = read_annotations([f], str(root), label_names=["x", "y"])
    assert [it.video_id for it in ann.items] == ["a.mp4", "e.mp4"]
    assert ann.label_names == ["x", "y"]
    by_src = {s.source: s.reason for s in ann.skipped}
    assert "malformed line" in by_src[f"{f}:2"]
    assert by_src[f"{f}:3"].startswith("unknown label 5")
    assert by_src[f"{f}:4"].startswith("unknown label -2")


def test_duplicates_across_files_name_both_sources(tmp_path, root):
    a = write(tmp_path / "a.txt", "x.mp4 0\ny.mp4 1\n")
    b = write(tmp_path / "b.txt", "z.mp4 0\n./x.mp4 1\n")
    ann = read_annotations([a, b], str(root))
    assert [it.video_id for it in ann.items] == ["x.mp4", "y.mp4", "z.mp4"]
    (dup,) = ann.skipped
    assert dup.source == f"{b}:2" and dup.video_id == "x.mp4" and f"first at {a}:1" in dup.reason


def test_escaping_paths_are_skipped(tmp_path, root):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.mp4").write_bytes(b"x")
    (root / "sub").mkdir()
    os.symlink(outside / "secret.mp4", root / "sub" / "link.mp4")
    os.symlink(outside, root / "outdir")
    (root / "real.mp4").write_bytes(b"x")
    os.symlink(root / "real.mp4", root / "inner_link.mp4")
    lines = ["../x.mp4", "a/../../x.mp4", "/etc/passwd.mp4", "sub/link.mp4", "outdir/secret.mp4",
             f"{root}/abs_inside.mp4", "inner_link.mp4", "a/../ok.mp4"]
    f = write(tmp_path / "l.txt", "".join(f"{p} 0\n" for p in lines))
    ann = read_annotations([f], str(root))
    assert [it.video_id for it in ann.items] == ["abs_inside.mp4", "inner_link.mp4", "ok.mp4"]
    assert ann.items[1].path == os.path.realpath(root / "real.mp4")
    assert len(ann.skipped) == 5
    assert all("escapes the video root" in r for r in reasons(ann))
    assert [s.source for s in ann.skipped] == [f"{f}:{i}" for i in range(1, 6)]


def test_one_file_under_two_names_is_one_item_the_first_listed(tmp_path, root):
    for name in ("a.mp4", "b.mp4"):
        write(root / "real" / name, name)
    os.symlink(root / "real", root / "dirlink")
    os.symlink(root / "real" / "a.mp4", root / "filelink.mp4")
    os.link(root / "real" / "b.mp4", root / "hard.mp4")
    lines = ["filelink.mp4 0", "real/a.mp4 0", "dirlink/a.mp4 0", "hard.mp4 1", "dirlink/b.mp4 1", "real/b.mp4 1",
             "missing.mp4 0", "dirlink/missing.mp4 0"]
    f = write(tmp_path / "l.txt", "".join(f"{p}\n" for p in lines))
    ann = read_annotations([f], str(root))
    # missing files have no identity: never taken for each other (extraction reports them)
    assert [it.video_id for it in ann.items] == ["filelink.mp4", "hard.mp4", "missing.mp4", "dirlink/missing.mp4"]
    assert ann.items[0].path == str((root / "real" / "a.mp4").resolve())
    assert [(s.video_id, s.kind, s.same_as) for s in ann.skipped] == [
        ("real/a.mp4", "same_file", "filelink.mp4"), ("dirlink/a.mp4", "same_file", "filelink.mp4"),
        ("dirlink/b.mp4", "same_file", "hard.mp4"), ("real/b.mp4", "same_file", "hard.mp4")]
    assert f"the same file as 'filelink.mp4' (first at {f}:1)" in ann.skipped[0].reason


def test_bad_files_raise_naming_file_and_line(tmp_path, root):
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(AnnotationError, match="nope.txt: annotation file not found"):
        read_annotations([missing], str(root), fmt="list")
    bad = write(tmp_path / "bad.txt", b"a.mp4 0\nb\xff.mp4 1\n")
    with pytest.raises(AnnotationError, match=r"bad.txt:2: not UTF-8"):
        read_annotations([bad], str(root), fmt="list")
    good = write(tmp_path / "good.txt", "a.mp4 0\n")
    with pytest.raises(AnnotationError, match="video root is not a directory"):
        read_annotations([good], str(tmp_path / "no_root"))


def test_list_class_names_need_label_names(tmp_path, root):
    write(root / "a.mp4", b"")
    write(root / "b.mp4", b"")
    f = write(tmp_path / "named.txt", "a.mp4 archery\nb.mp4 playing guitar\n")
    ann = read_annotations([f], str(root), label_names=["archery", "playing guitar"])
    assert [(it.video_id, it.label) for it in ann.items] == [("a.mp4", 0), ("b.mp4", 1)]
    ann = read_annotations([f], str(root))
    assert "pass --label-names" in ann.skipped[0].reason and ann.skipped[0].source == f"{f}:1"


def test_list_label_beyond_int32_is_skipped(tmp_path, root):
    f = write(tmp_path / "l.txt", f"a.mp4 0\nb.mp4 {2 ** 31}\n")
    ann = read_annotations([f], str(root))
    assert [it.video_id for it in ann.items] == ["a.mp4"]
    assert "int32" in ann.skipped[0].reason


def test_multi_label_list_is_refused_naming_file_and_line(tmp_path, root):
    # MMAction2's tests/data/annotations/video_test_list_multi_label.txt, behind one single-label line
    f = write(tmp_path / "video_test_list_multi_label.txt", "one.mp4 1\ntest.mp4 0 3\ntest.mp4 0 2 4\n")
    with pytest.raises(AnnotationError, match=r"multi-label lists are not supported") as e:
        read_annotations([f], str(root))
    assert f"{f}:2:" in str(e.value) and "one int32 label per video" in str(e.value)


def test_multi_label_check_keeps_real_files_with_digits(tmp_path, root):
    write(root / "take 2", b"")  # a real video named "take 2", labelled 3
    write(root / "clip 7 8.mp4", b"")
    f = write(tmp_path / "l.txt", "take 2 3\nclip 7 8.mp4 1\n")
    ann = read_annotations([f], str(root))
    assert [(it.video_id, it.label) for it in ann.items] == [("take 2", 3), ("clip 7 8.mp4", 1)]


@pytest.mark.parametrize("text", ["imgs 5 127\nimgs 5 127\n", "imgs 5 1\nimgs 5 3 5\n",
                                  "rawvideo_dataset 1 2 0\n"])
def test_raw_frame_lists_are_refused_naming_the_format(tmp_path, root, text):
    f = write(tmp_path / "frame_test_list.txt", text)
    with pytest.raises(AnnotationError, match=r"frame_test_list.txt:1: .*MMAction2 raw-frame list"):
        read_annotations([f], str(root))


def test_raw_frame_list_of_existing_frame_dirs_is_refused(tmp_path, root):
    (root / "imgs").mkdir()
    f = write(tmp_path / "frames.txt", "imgs 5\n")  # frame_dir total_frames, no label
    with pytest.raises(AnnotationError, match="raw-frame list"):
        read_annotations([f], str(root), fmt="list")


@pytest.mark.parametrize("record, name", [
    ({"video_dir": "rawvideo_dataset", "label": 1, "num_clips": 2, "positive_clip_inds": [0]}, "raw-video JSON"),
    ({"frame_dir": "imgs", "total_frames": 5, "label": 127}, "raw-frame JSON"),
    ({"filename": "test.mp4", "label": 0}, "MMAction2 video JSON"),
])
def test_other_json_formats_are_refused_naming_the_format(tmp_path, root, record, name):
    f = write(tmp_path / "rawvideo_test_anno.json", json.dumps([record], indent=2))
    with pytest.raises(AnnotationError, match=f"{name}.* not supported"):
        read_annotations([f], str(root))


def test_format_spec_and_option_errors(tmp_path, root):
    assert parse_format_spec("hmdb51:subset=train,split=1") == ("hmdb51", {"subset": "train", "split": "1"})
    assert parse_format_spec("list") == ("list", {})
    with pytest.raises(ValueError, match="key=value"):
        parse_format_spec("kinetics:flat")
    f = write(tmp_path / "l.txt", "a.mp4 0\n")
    with pytest.raises(ValueError, match="unknown annotation format 'csv'"):
        read_annotations([f], str(root), fmt="csv")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['layout'\] for annotation format 'list'"):
        read_annotations([f], str(root), fmt="list", layout="flat")
    with pytest.raises(ValueError, match="both in fmt"):
        read_annotations([f], str(root), fmt="kinetics:layout=flat", layout="flat")


# ----------------------------------------------------------------------------- UCF101 official

CLASS_IND = "1 ApplyEyeMakeup\r\n2 Archery\r\n3 HandstandPushups\r\n"


def test_ucf101_official(tmp_path, root):
    d = tmp_path / "ucfTrainTestlist"
    write(d / "classInd.txt", CLASS_IND)
    train = write(d / "trainlist01.txt",
                  "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
                  "Archery/v_Archery_g08_c01.avi 2\r\n"
                  "Archery/v_Archery_g09_c01.avi 1\r\n"       # disagrees with its folder
                  "HandStandPushups/v_HandStandPushups_g08_c01.avi 3\r\n"
                  "Archery/v_Archery_g10_c01.avi 4\r\n")     # 1-based label out of range
    test = write(d / "testlist01.txt",
                 "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\nArchery/v_Archery_g01_c01.avi\r\n"
                 "Bowling/v_Bowling_g01_c01.avi\r\n")
    ann = read_annotations([train], str(root))  # classInd.txt found next to the list
    assert ann.format == "ucf101"
    assert ann.label_names == ["ApplyEyeMakeup", "Archery", "HandstandPushups"]
    assert [(it.video_id, it.label) for it in ann.items] == [
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", 0),
        ("Archery/v_Archery_g08_c01.avi", 1),
        ("HandStandPushups/v_HandStandPushups_g08_c01.avi", 2),
    ]
    by_src = {s.source: s.reason for s in ann.skipped}
    assert "disagrees with the folder 'Archery'" in by_src[f"{train}:3"]
    assert by_src[f"{train}:5"].startswith("unknown label 4")

    ann = read_annotations([test, str(d / "classInd.txt")], str(root))
    assert [(it.video_id, it.label) for it in ann.items] == [
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", 0), ("Archery/v_Archery_g01_c01.avi", 1)]
    (skip,) = ann.skipped
    assert skip.source == f"{test}:3" and skip.reason.startswith("unknown label 'Bowling'")


def test_ucf101_class_index_required_and_validated(tmp_path, root):
    test = write(tmp_path / "lists" / "testlist01.txt", "Archery/v_Archery_g01_c01.avi\n")
    with pytest.raises(AnnotationError, match="testlist01.txt: UCF101 lists need classInd.txt"):
        read_annotations([test], str(root))
    bad = write(tmp_path / "other" / "classInd.txt", "1 ApplyEyeMakeup\n3 Archery\n")
    with pytest.raises(AnnotationError, match="classInd.txt: class indices must be 1..2"):
        read_annotations([test], str(root), fmt="ucf101", class_index=bad)
    bad = write(tmp_path / "other2" / "classInd.txt", "1 ApplyEyeMakeup\nArchery\n")
    with pytest.raises(AnnotationError, match=r"classInd.txt:2: expected 'index ClassName'"):
        read_annotations([test], str(root), fmt="ucf101", class_index=bad)
    good = write(tmp_path / "ok" / "classInd.txt", CLASS_IND)
    ann = read_annotations([test], str(root), fmt="ucf101", class_index=good)
    assert [(it.video_id, it.label) for it in ann.items] == [("Archery/v_Archery_g01_c01.avi", 1)]


# ----------------------------------------------------------------------------- HMDB51 official

def make_hmdb(d: Path) -> None:
    write(d / "brush_hair_test_split1.txt", "April_09_brush_hair_u_nm_np1_ba_goo_0.avi 1 \nBlonde_brush_hair_f_nm_np1_ba_goo_0.avi 2 \nunused_brush.avi 0 \n")
    write(d / "cartwheel_test_split1.txt", "(Cartwheel)_Pascal_cartwheel_f_cm_np1_le_med_0.avi 2 \nAcrobacias_cartwheel_f_cm_np1_ba_bad_1.avi 1 \nweird.avi 7\n")
    write(d / "brush_hair_test_split2.txt", "April_09_brush_hair_u_nm_np1_ba_goo_0.avi 2 \n")
    write(d / "cartwheel_test_split2.txt", "Acrobacias_cartwheel_f_cm_np1_ba_bad_1.avi 2 \n")
    write(d / "README.txt", "not a split file\n")


def test_hmdb51_official(tmp_path, root):
    d = tmp_path / "testTrainMulti_7030_splits"
    make_hmdb(d)
    assert detect_format([str(d)]) == "hmdb51"
    ann = read_annotations([str(d)], str(root), subset="train", split=1)
    assert ann.format == "hmdb51" and ann.label_names == ["brush_hair", "cartwheel"]
    assert [(it.video_id, it.label) for it in ann.items] == [
        ("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi", 0),
        ("cartwheel/Acrobacias_cartwheel_f_cm_np1_ba_bad_1.avi", 1),
    ]
    (skip,) = ann.skipped
    assert skip.source == f"{d / 'cartwheel_test_split1.txt'}:3" and "malformed line" in skip.reason

    ann = read_annotations([str(d)], str(root), fmt="hmdb51:subset=test,split=2")
    assert [(it.video_id, it.label) for it in ann.items] == [
        ("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi", 0),
        ("cartwheel/Acrobacias_cartwheel_f_cm_np1_ba_bad_1.avi", 1),
    ]
    files = [str(d / "brush_hair_test_split1.txt"), str(d / "cartwheel_test_split1.txt")]
    ann = read_annotations(files, str(root), subset="val")
    assert [it.video_id for it in ann.items] == ["brush_hair/Blonde_brush_hair_f_nm_np1_ba_goo_0.avi",
                                                 "cartwheel/(Cartwheel)_Pascal_cartwheel_f_cm_np1_le_med_0.avi"]


def test_hmdb51_errors(tmp_path, root):
    d = tmp_path / "splits"
    make_hmdb(d)
    with pytest.raises(AnnotationError, match="pass subset='train'"):
        read_annotations([str(d)], str(root), fmt="hmdb51", split=1)
    with pytest.raises(AnnotationError, match=r"cover splits \[1, 2\]; pass split=K"):
        read_annotations([str(d)], str(root), fmt="hmdb51", subset="train")
    with pytest.raises(AnnotationError, match="README.txt: not an HMDB51 split file name"):
        read_annotations([str(d / "README.txt")], str(root), fmt="hmdb51", subset="train")
    # a class missing from given label_names is skipped, not renumbered
    ann = read_annotations([str(d)], str(root), fmt="hmdb51", subset="train", split=1, label_names=["cartwheel"])
    assert [(it.video_id, it.label) for it in ann.items] == [("cartwheel/Acrobacias_cartwheel_f_cm_np1_ba_bad_1.avi", 0)]
    assert "unknown label 'brush_hair'" in reasons(ann)[0]


# ----------------------------------------------------------------------------- SSv2

SSV2_LABELS = {"Holding something next to something": "1", "Pushing something from left to right": "0"}


def test_ssv2(tmp_path, root):
    d = tmp_path / "ssv2"
    write(d / "something-something-v2-labels.json", json.dumps(SSV2_LABELS, indent=4))
    records = [
        {"id": "78687", "label": "holding potato next to vicks vaporub bottle",
         "template": "Holding [something] next to [something]", "placeholders": ["potato", "vicks"]},
        {"id": "42326", "label": "pushing a pen from left to right",
         "template": "Pushing [something] from left to right", "placeholders": ["a pen"]},
        {"id": "3", "label": "x", "template": "Dancing with [something]", "placeholders": ["x"]},
        {"label": "no id"},
    ]
    train = write(d / "something-something-v2-train.json", json.dumps(records, indent=4))
    ann = read_annotations([train], str(root))
    assert ann.format == "ssv2"
    assert ann.label_names == ["Pushing something from left to right", "Holding something next to something"]
    assert [(it.video_id, it.label) for it in ann.items] == [("78687.webm", 1), ("42326.webm", 0)]
    # json.dumps(indent=4): record k starts on line 2 + k * (lines per record)
    text_lines = Path(train).read_text().split("\n")
    assert text_lines[int(ann.items[1].source.rsplit(":", 1)[1]) - 1].strip() == "{"
    assert '"42326"' in text_lines[int(ann.items[1].source.rsplit(":", 1)[1])]
    unknown, malformed = ann.skipped
    assert unknown.video_id == "3.webm" and unknown.reason == "unknown label 'Dancing with something'"
    assert "malformed record" in malformed.reason

    test = write(d / "something-something-v2-test.json", json.dumps([{"id": "1420"}, {"id": 7}]))
    ann = read_annotations([test], str(root), video_ext="mp4")
    assert [(it.video_id, it.label, it.source) for it in ann.items] == [
        ("1420.mp4", -1, f"{test}:1"), ("7.mp4", -1, f"{test}:1")]


def test_ssv2_errors(tmp_path, root):
    d = tmp_path / "nolabels"
    train = write(d / "something-something-v2-train.json",
                  json.dumps([{"id": "1", "template": "Holding [something]"}]))
    with pytest.raises(AnnotationError, match=r"something-something-v2-train.json:1: labeled SSv2 record but no labels file"):
        read_annotations([train], str(root))
    broken = write(d / "something-something-v2-validation.json", '[\n {"id": "1"},\n {"id": 2,}\n]\n')
    with pytest.raises(AnnotationError, match=r"validation.json:3: invalid JSON"):
        read_annotations([broken], str(root))
    labels = write(d / "labels.json", json.dumps({"a": "0", "b": "2"}))
    with pytest.raises(AnnotationError, match=r"labels.json: label indices must be 0..1"):
        read_annotations([train], str(root), fmt="ssv2", labels_file=labels)


# ----------------------------------------------------------------------------- Kinetics

K400_CSV = ("label,youtube_id,time_start,time_end,split,is_cc\n"
            "abseiling,--07WQ2iBlw,1,11,train,0\n"
            "\"passing American football (in game)\",-0x0M5q8jtQ,30,40,train,0\n"
            "air drumming,0AbC,5.0,15,train,0\n"
            "abseiling,bad,one,11,train,0\n"
            "abseiling,--07WQ2iBlw,1,11,train,0\n")


def test_kinetics(tmp_path, root):
    f = write(tmp_path / "k400" / "train.csv", K400_CSV)
    ann = read_annotations([f], str(root))
    assert ann.format == "kinetics"
    assert ann.label_names == ["abseiling", "air drumming", "passing American football (in game)"]
    assert [(it.video_id, it.label, it.source) for it in ann.items] == [
        ("abseiling/--07WQ2iBlw_000001_000011.mp4", 0, f"{f}:2"),
        ("passing American football (in game)/-0x0M5q8jtQ_000030_000040.mp4", 2, f"{f}:3"),
        ("air drumming/0AbC_000005_000015.mp4", 1, f"{f}:4"),
    ]
    assert [s.source for s in ann.skipped] == [f"{f}:5", f"{f}:6"]
    assert "malformed row" in ann.skipped[0].reason and "duplicate id (first at" in ann.skipped[1].reason

    flat = read_annotations([f], str(root), fmt="kinetics:layout=flat,video_ext=webm")
    assert flat.items[0].video_id == "--07WQ2iBlw_000001_000011.webm"
    under = read_annotations([f], str(root), fmt="kinetics",
                             path_pattern="{label_underscore}/{youtube_id}.{ext}")
    assert under.items[2].video_id == "air_drumming/0AbC.mp4"


def test_kinetics_classes_file_and_errors(tmp_path, root):
    train = write(tmp_path / "train.csv", K400_CSV)
    val = write(tmp_path / "validate.csv", "label,youtube_id,time_start,time_end,split\n"
                                           "air drumming,zz,0,10,val\nunseen class,yy,0,10,val\n")
    ann = read_annotations([val], str(root), classes_file=train)
    assert [(it.video_id, it.label) for it in ann.items] == [("air drumming/zz_000000_000010.mp4", 1)]
    assert ann.skipped[0].reason == "unknown label 'unseen class'" and ann.skipped[0].source == f"{val}:3"

    nolabel = write(tmp_path / "test.csv", "youtube_id,time_start,time_end,split\nabc,0,10,test\n")
    with pytest.raises(AnnotationError, match=r"test.csv:2: row has no label"):
        read_annotations([nolabel], str(root))
    ann = read_annotations([nolabel], str(root), layout="flat")
    assert [(it.video_id, it.label) for it in ann.items] == [("abc_000000_000010.mp4", -1)]

    bad_header = write(tmp_path / "bad.csv", "label,id,start,end\nx,y,0,1\n")
    with pytest.raises(AnnotationError, match=r"bad.csv:1: Kinetics CSV header lacks"):
        read_annotations([bad_header], str(root))


# ----------------------------------------------------------------------------- Diving48

def test_diving48(tmp_path, root):
    d = tmp_path / "diving48"
    write(d / "Diving48_vocab.json", json.dumps([["Back", "15som", "05Twis", "FREE"], ["Back", "15som", "15Twis", "FREE"]]))
    train = write(d / "Diving48_V2_train.json", json.dumps([
        {"vid_name": "-mmq0PT-u8k_00000", "label": 0, "start_frame": 0, "end_frame": 83},
        {"vid_name": "-mmq0PT-u8k_00001", "label": 1, "start_frame": 0, "end_frame": 90},
        {"vid_name": "-mmq0PT-u8k_00002", "label": 2, "start_frame": 0, "end_frame": 90},
        {"vid_name": "-mmq0PT-u8k_00003", "label": "x", "start_frame": 0, "end_frame": 90},
    ], indent=1))
    ann = read_annotations([train], str(root))
    assert ann.format == "diving48"
    assert ann.label_names == ["Back 15som 05Twis FREE", "Back 15som 15Twis FREE"]
    assert [(it.video_id, it.label) for it in ann.items] == [("-mmq0PT-u8k_00000.mp4", 0), ("-mmq0PT-u8k_00001.mp4", 1)]
    assert reasons(ann)[0].startswith("unknown label 2") and "not an integer" in reasons(ann)[1]

    lone = write(tmp_path / "elsewhere" / "Diving48_V2_test.json",
                 json.dumps([{"vid_name": "a", "label": 47, "start_frame": 0, "end_frame": 1}]))
    ann = read_annotations([lone], str(root))
    assert ann.label_names is None and [(it.video_id, it.label) for it in ann.items] == [("a.mp4", 47)]


# ----------------------------------------------------------------------------- folder

def test_folder(tmp_path, root):
    for rel in ["b/clip2.MP4", "b/clip1.webm", "a.avi", "notes.txt", ".hidden.mp4", ".cache/x.mp4", "c/d/e.mkv"]:
        write(root / rel, b"x")
    outside = tmp_path / "outside"
    write(outside / "leak.mp4", b"x")
    os.symlink(outside, root / "linked_out")
    os.symlink(outside / "leak.mp4", root / "leak.mp4")
    ann = read_annotations([], str(root))
    assert ann.format == "folder" and ann.label_names is None
    assert [it.video_id for it in ann.items] == ["a.avi", "b/clip1.webm", "b/clip2.MP4", "c/d/e.mkv"]
    assert all(it.label == -1 for it in ann.items)
    assert len(ann.skipped) == 2 and all("escapes the video root" in r for r in reasons(ann))

    sub = read_annotations([str(root / "b")], str(root), extensions="webm")
    assert [it.video_id for it in sub.items] == ["b/clip1.webm"]
    with pytest.raises(AnnotationError, match="outside the video root"):
        read_annotations([str(outside)], str(root), fmt="folder")


def test_detect_format_rules_and_mixing(tmp_path):
    f_list = write(tmp_path / "ucf101_train_split_1_videos.txt", "a 0\n")
    f_ucf = write(tmp_path / "trainlist01.txt", "a 1\n")
    f_csv = write(tmp_path / "x.csv", "label,youtube_id,time_start,time_end\n")
    f_json = write(tmp_path / "mine.json", json.dumps([{"vid_name": "a", "label": 0}]))
    assert [detect_format([f]) for f in (f_list, f_ucf, f_csv, f_json)] == ["list", "ucf101", "kinetics", "diving48"]
    assert detect_format([]) == "folder"
    assert detect_format([str(tmp_path)]) == "folder"
    with pytest.raises(AnnotationError, match="different formats"):
        detect_format([f_list, f_ucf])


def test_list_parsing_is_fast(tmp_path, root):
    n = 100_000
    f = tmp_path / "big.txt"
    f.write_text("".join(f"class{i % 400}/video_{i:07d}.mp4 {i % 400}\n" for i in range(n)))
    start = time.perf_counter()
    ann = read_annotations([str(f)], str(root))
    elapsed = time.perf_counter() - start
    assert len(ann.items) == n and ann.items[-1].label == (n - 1) % 400
    assert elapsed < 10, f"{n} lines took {elapsed:.1f}s"


# ----------------------------------------------------------------------------- naming + script

def test_store_name():
    assert store_name("dalle", "ucf101", "train_split1", 2, False, 128, "center", 128) == \
        "dalle_ucf101_train_split1_fps2_hflip0_128center128"
    assert store_name("vqvae", "ssv2", "val", 0.5, 1, 160, "top", 128) == "vqvae_ssv2_val_fps0.5_hflip1_160top128"
    assert format_fps(2.0) == "2" and format_fps("16") == "16"
    with pytest.raises(ValueError, match="crop_type"):
        store_name("dalle", "ucf101", "train", 2, 0, 128, "left", 128)
    with pytest.raises(ValueError, match="top, center or bottom in a store name"):  # read_video's "none" has no name
        store_name("dalle", "ucf101", "train", 2, 0, 128, "none", 128)
    with pytest.raises(ValueError, match="split must be"):
        store_name("dalle", "ucf101", "a/b", 2, 0, 128, "center", 128)
    with pytest.raises(ValueError, match="fps must be"):
        format_fps(0)


def run_script(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    full_env = {"PATH": os.environ["PATH"], "DRY_RUN": "1", **env}
    return subprocess.run(["bash", str(SCRIPT), *args], env=full_env, capture_output=True, text=True, timeout=30)


def flag_values(cmd: list[str], flag: str) -> list[str]:
    i = cmd.index(flag) + 1
    out = []
    while i < len(cmd) and not cmd[i].startswith("--"):
        out.append(cmd[i])
        i += 1
    return out


@pytest.mark.parametrize("dataset,split,files,expect_fmt", [
    ("ucf101", "train_split1", ["ucfTrainTestlist/trainlist01.txt"], "ucf101"),
    ("ucf101", "val_split2", ["ucf101_val_split_2_videos.txt", "ucfTrainTestlist/testlist02.txt"], "list"),
    ("hmdb51", "val_split3", ["testTrainMulti_7030_splits/"], "hmdb51:subset=test,split=3"),
    ("ssv2", "val", ["something-something-v2-validation.json"], "ssv2"),
    ("kinetics400", "train", ["train.csv"], "kinetics"),
    ("diving48", "test", ["Diving48_V2_test.json"], "diving48"),
])
def test_script_dry_run_matches_store_name(tmp_path, dataset, split, files, expect_fmt):
    anno_root = tmp_path / "anno"
    for rel in files:
        (anno_root / rel).mkdir(parents=True) if rel.endswith("/") else write(anno_root / rel, "x\n")
    env = {"ANNO_ROOT": str(anno_root), "TOKEN_ROOT": str(tmp_path / "tokens"), "PYTHON": "py3"}
    res = run_script([dataset, split, "160", "128", "top", "1", "4", "--workers", "2"], env)
    assert res.returncode == 0, res.stderr
    cmd = shlex.split(res.stdout)
    assert cmd[:3] == ["py3", "-m", "video2token.extract"]
    assert flag_values(cmd, "--output") == [str(tmp_path / "tokens" / store_name("dalle", dataset, split, 4, True, 160, "top", 128))]
    assert flag_values(cmd, "--anno") == [str(anno_root / files[0]).rstrip("/")]
    assert flag_values(cmd, "--anno-format") == [expect_fmt]
    assert flag_values(cmd, "--video-root") == [f"data/videos/{dataset}"]
    assert "--hflip" in cmd and cmd[-2:] == ["--workers", "2"] and "--tokenizer-path" not in cmd
    for flag, value in [("--fps", "4"), ("--frame-shorter-side", "160"), ("--crop-size", "128"),
                        ("--crop-type", "top"), ("--tokenizer", "dalle")]:
        assert flag_values(cmd, flag) == [value]


def test_script_kinetics_val_uses_train_classes_and_reads_back(tmp_path, root):
    anno_root = tmp_path / "anno"
    write(anno_root / "train.csv", K400_CSV)
    write(anno_root / "validate.csv", "label,youtube_id,time_start,time_end,split\nair drumming,zz,0,10,val\n")
    res = run_script(["kinetics400", "val", "128", "128", "center", "0", "2"],
                     {"ANNO_ROOT": str(anno_root), "VIDEO_ROOT": str(root), "TOKENIZER": "vqvae",
                      "TOKENIZER_PATH": "/w/vq"})
    assert res.returncode == 0, res.stderr
    cmd = shlex.split(res.stdout)
    assert "--hflip" not in cmd and flag_values(cmd, "--tokenizer-path") == ["/w/vq"]
    assert os.path.basename(flag_values(cmd, "--output")[0]) == store_name("vqvae", "kinetics400", "val", 2, 0, 128, "center", 128)
    # what the script hands to extract is something read_annotations accepts as is
    ann = read_annotations(flag_values(cmd, "--anno"), flag_values(cmd, "--video-root")[0],
                           fmt=flag_values(cmd, "--anno-format")[0])
    assert [(it.video_id, it.label) for it in ann.items] == [("air drumming/zz_000000_000010.mp4", 1)]


def test_script_folder_and_custom(tmp_path, root):
    res = run_script(["howto100m", "train", "128", "128", "center", "0", "2"], {"VIDEO_ROOT": str(root)})
    cmd = shlex.split(res.stdout)
    assert flag_values(cmd, "--anno") == [str(root)] and flag_values(cmd, "--anno-format") == ["folder"]
    a, b = write(tmp_path / "a.txt", "x 0\n"), write(tmp_path / "b.txt", "y 1\n")
    res = run_script(["custom", "mine", "128", "128", "center", "0", "0.5"], {"ANNO": f"{a} {b}", "ANNO_FORMAT": "list"})
    cmd = shlex.split(res.stdout)
    assert flag_values(cmd, "--anno") == [a, b] and flag_values(cmd, "--anno-format") == ["list"]
    assert os.path.basename(flag_values(cmd, "--output")[0]) == store_name("dalle", "custom", "mine", 0.5, 0, 128, "center", 128)


def test_script_custom_anno_paths_with_spaces_and_tokenizer_kind(tmp_path):
    spaced = write(tmp_path / "my lists" / "train list.txt", "x 0\n")
    other = write(tmp_path / "my lists" / "more.txt", "y 1\n")
    res = run_script(["custom", "mine", "128", "128", "center", "0", "2"], {"ANNO": spaced})
    assert res.returncode == 0, res.stderr
    assert flag_values(shlex.split(res.stdout), "--anno") == [spaced]
    res = run_script(["custom", "mine", "128", "128", "center", "0", "2"], {"ANNO": f"{spaced}\n{other}\n"})
    assert flag_values(shlex.split(res.stdout), "--anno") == [spaced, other]
    vq = tmp_path / "vq"
    write(vq / "model.safetensors", b"")
    res = run_script(["custom", "mine", "128", "128", "center", "0", "2"], {"ANNO": spaced, "TOKENIZER_PATH": str(vq)})
    cmd = shlex.split(res.stdout)
    assert flag_values(cmd, "--tokenizer") == ["vqvae"] and os.path.basename(flag_values(cmd, "--output")[0]).startswith("vqvae_")
    assert cmd[0] == str(REPO / ".venv" / "bin" / "python")  # the default interpreter


@pytest.mark.parametrize("args,env,message", [
    (["ucf102", "train", "128", "128", "center", "0", "2"], {}, "unknown dataset 'ucf102'"),
    (["ucf101", "train", "128", "128", "center", "0", "2"], {}, "unknown split 'train' for ucf101"),
    (["ssv2", "train", "128", "128", "middle", "0", "2"], {}, "CROP_TYPE must be"),
    (["ssv2", "train", "128", "128", "center", "0", "2.0"], {}, "FPS must be"),
    (["ssv2", "train", "128", "128", "center", "0", "2"], {"ANNO_ROOT": "/nonexistent"},
     "no annotation for ssv2 train; looked for: /nonexistent/sthv2_train_list_videos.txt"),
    (["custom", "x", "128", "128", "center", "0", "2"], {}, "needs ANNO"),
    (["ssv2", "train"], {}, "expected 7 arguments"),
])
def test_script_errors(args, env, message):
    res = run_script(args, env)
    assert res.returncode != 0 and message in res.stderr
