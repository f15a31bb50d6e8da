#!/usr/bin/env bash
# Extract frozen VQ-VAE tokens of one dataset split into a token store (VIMPAC stage 1).
#
# Usage:
#   bash video2token/scripts/extract_tokens.sh DATASET SPLIT FRAME_SHORTER_SIDE CROP_SIZE \
#       CROP_TYPE USE_HFLIP FPS [extra flags for python -m video2token.extract]
# e.g. UCF101 split 1 train videos at 2 FPS, shorter side 128, center crop 128, no flip:
#   VIDEO_ROOT=/data/ucf101/videos TOKEN_ROOT=/data/tokens \
#       bash video2token/scripts/extract_tokens.sh ucf101 train_split1 128 128 center 0 2
#
# DATASET / SPLIT:
#   ucf101, hmdb51   train_split{1,2,3}, val_split{1,2,3}
#   ssv2             train, val, test
#   kinetics400      train, val, test
#   diving48         train, test
#   howto100m        train          (every video under VIDEO_ROOT, unlabeled)
#   custom           any name       (ANNO="file [file ...]", ANNO_FORMAT, default auto; a path
#                                    with spaces: ANNO naming that one file, or one file a line)
# Annotations are looked up in ANNO_ROOT; an MMAction2 list (e.g.
# ucf101_train_split_1_videos.txt, sthv2_train_list_videos.txt) wins over the official files.
# Official files: ucfTrainTestlist/{trainlist,testlist}0K.txt (+classInd.txt),
# testTrainMulti_7030_splits/ (HMDB51), something-something-v2-{train,validation,test}.json
# (+labels), {train,validate,test}.csv (Kinetics; val/test take the class index from
# train.csv), Diving48_V2_{train,test}.json (+Diving48_vocab.json).
#
# Environment:
#   VIDEO_ROOT      videos of this dataset        (default data/videos/$DATASET)
#   TOKEN_ROOT      where token stores go         (default data/video_tokens)
#   ANNO_ROOT       annotation files              (default data/annotations/$DATASET)
#   TOKENIZER       dalle | vqvae                 (default: vqvae when TOKENIZER_PATH is a
#                                                  directory with model.safetensors, else dalle)
#   TOKENIZER_PATH  tokenizer weights             (default: extract's own default)
#   ANNO_FORMAT     override the annotation format, options after ':' (e.g. kinetics:layout=flat)
#   PYTHON          interpreter                   (default: the repository's .venv/bin/python)
#   DRY_RUN=1       print the command instead of running it
#
# Output: $TOKEN_ROOT/${TOKENIZER}_${DATASET}_${SPLIT}_fps${FPS}_hflip${USE_HFLIP}_${S}${CROP_TYPE}${C}
# (the same name as video2token.naming.store_name).
set -euo pipefail

die() { echo "extract_tokens.sh: error: $*" >&2; exit 2; }

if [[ $# -lt 7 ]]; then
  sed -n '2,38p' "$0" | sed 's/^# \{0,1\}//' >&2
  die "expected 7 arguments (got $#)"
fi
DATASET=$1 SPLIT=$2 SHORTER_SIDE=$3 CROP_SIZE=$4 CROP_TYPE=$5 USE_HFLIP=$6 FPS=$7
shift 7

[[ $SHORTER_SIDE =~ ^[1-9][0-9]*$ ]] || die "FRAME_SHORTER_SIDE must be a positive integer, got '$SHORTER_SIDE'"
[[ $CROP_SIZE =~ ^[1-9][0-9]*$ ]] || die "CROP_SIZE must be a positive integer, got '$CROP_SIZE'"
[[ $CROP_TYPE =~ ^(top|center|bottom)$ ]] || die "CROP_TYPE must be top, center or bottom, got '$CROP_TYPE'"
[[ $USE_HFLIP =~ ^[01]$ ]] || die "USE_HFLIP must be 0 or 1, got '$USE_HFLIP'"
# canonical spelling only (2, 0.5; not 2.0), so the directory name matches naming.format_fps
[[ $FPS =~ ^([1-9][0-9]*|[0-9]+\.[0-9]*[1-9])$ ]] || die "FPS must be a positive number written like 2 or 0.5, got '$FPS'"
[[ $SPLIT =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || die "SPLIT must be letters, digits, '_', '.', '-', got '$SPLIT'"

VIDEO_ROOT=${VIDEO_ROOT:-data/videos/$DATASET}
TOKEN_ROOT=${TOKEN_ROOT:-data/video_tokens}
ANNO_ROOT=${ANNO_ROOT:-data/annotations/$DATASET}
TOKENIZER_PATH=${TOKENIZER_PATH:-}
if [[ -z ${TOKENIZER:-} ]]; then  # the kind is part of the store name; extract checks it against the path
  TOKENIZER=$([[ -n $TOKENIZER_PATH && -f $TOKENIZER_PATH/model.safetensors ]] && echo vqvae || echo dalle)
fi
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [[ -z ${PYTHON:-} ]]; then
  [[ -x $repo_root/.venv/bin/python ]] || [[ ${DRY_RUN:-0} == 1 ]] ||
    die "no Python to run with: $repo_root/.venv/bin/python does not exist (\`make install\` creates it) and" \
        "PYTHON is not set; set PYTHON=/path/to/python (with the project's requirements installed)"
  PYTHON=$repo_root/.venv/bin/python
fi

anno=()
fmt=
# first existing candidate wins: "format|path" pairs
pick() {
  local want=$1; shift
  local tried=()
  for cand in "$@"; do
    local f=${cand%%|*} p=${cand#*|}
    if [[ -e $p ]]; then anno=("$p"); fmt=$f; return 0; fi
    tried+=("$p")
  done
  die "no annotation for $DATASET $want; looked for: ${tried[*]}"
}
bad_split() { die "unknown split '$SPLIT' for $DATASET; expected one of: $*"; }

case $DATASET in
  ucf101)
    [[ $SPLIT =~ ^(train|val)_split([123])$ ]] || bad_split train_split{1,2,3} val_split{1,2,3}
    s=${BASH_REMATCH[1]} k=${BASH_REMATCH[2]}
    official=$([[ $s == train ]] && echo trainlist || echo testlist)0$k.txt
    pick "$SPLIT" "list|$ANNO_ROOT/ucf101_${s}_split_${k}_videos.txt" "ucf101|$ANNO_ROOT/ucfTrainTestlist/$official"
    ;;
  hmdb51)
    [[ $SPLIT =~ ^(train|val)_split([123])$ ]] || bad_split train_split{1,2,3} val_split{1,2,3}
    s=${BASH_REMATCH[1]} k=${BASH_REMATCH[2]}
    subset=$([[ $s == train ]] && echo train || echo test)
    pick "$SPLIT" "list|$ANNO_ROOT/hmdb51_${s}_split_${k}_videos.txt" \
      "hmdb51:subset=$subset,split=$k|$ANNO_ROOT/testTrainMulti_7030_splits"
    ;;
  ssv2)
    case $SPLIT in
      train) official=train ;; val) official=validation ;; test) official=test ;;
      *) bad_split train val test ;;
    esac
    pick "$SPLIT" "list|$ANNO_ROOT/sthv2_${SPLIT}_list_videos.txt" "ssv2|$ANNO_ROOT/something-something-v2-$official.json"
    ;;
  kinetics400)
    case $SPLIT in
      train) fmt_k=kinetics official=train.csv ;;
      val) fmt_k="kinetics:classes_file=$ANNO_ROOT/train.csv" official=validate.csv ;;
      test) fmt_k="kinetics:classes_file=$ANNO_ROOT/train.csv" official=test.csv ;;
      *) bad_split train val test ;;
    esac
    pick "$SPLIT" "list|$ANNO_ROOT/kinetics400_${SPLIT}_list_videos.txt" "$fmt_k|$ANNO_ROOT/$official"
    ;;
  diving48)
    [[ $SPLIT =~ ^(train|test)$ ]] || bad_split train test
    pick "$SPLIT" "list|$ANNO_ROOT/diving48_${SPLIT}_list_videos.txt" "diving48|$ANNO_ROOT/Diving48_V2_$SPLIT.json"
    ;;
  howto100m)
    [[ $SPLIT == train ]] || bad_split train
    anno=("$VIDEO_ROOT") fmt=folder
    ;;
  custom)
    [[ -n ${ANNO:-} ]] || die "DATASET=custom needs ANNO (annotation file(s), space-separated)"
    if [[ -e $ANNO ]]; then
      anno=("$ANNO")                      # one file, spaces in its path and all
    elif [[ $ANNO == *$'\n'* ]]; then
      mapfile -t anno < <(printf '%s\n' "$ANNO" | sed '/^$/d')   # one file a line
    else
      read -r -a anno <<< "$ANNO"
    fi
    fmt=auto
    ;;
  *)
    die "unknown dataset '$DATASET'; expected ucf101, hmdb51, ssv2, kinetics400, diving48, howto100m or custom"
    ;;
esac
fmt=${ANNO_FORMAT:-$fmt}

OUTPUT=$TOKEN_ROOT/${TOKENIZER}_${DATASET}_${SPLIT}_fps${FPS}_hflip${USE_HFLIP}_${SHORTER_SIDE}${CROP_TYPE}${CROP_SIZE}

cmd=("$PYTHON" -m video2token.extract
     --video-root "$VIDEO_ROOT" --anno "${anno[@]}" --anno-format "$fmt"
     --output "$OUTPUT" --fps "$FPS" --frame-shorter-side "$SHORTER_SIDE"
     --crop-size "$CROP_SIZE" --crop-type "$CROP_TYPE")
[[ $USE_HFLIP == 1 ]] && cmd+=(--hflip)
cmd+=(--tokenizer "$TOKENIZER")
[[ -n $TOKENIZER_PATH ]] && cmd+=(--tokenizer-path "$TOKENIZER_PATH")
cmd+=("$@")

if [[ ${DRY_RUN:-0} == 1 ]]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi

# the package lives two levels up from this script; callers need not set PYTHONPATH
export PYTHONPATH="$repo_root${PYTHONPATH:+:$PYTHONPATH}"
echo "extract_tokens.sh: $DATASET $SPLIT -> $OUTPUT" >&2
exec "${cmd[@]}"
