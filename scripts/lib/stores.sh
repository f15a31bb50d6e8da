#!/usr/bin/env bash
# Shared by scripts/*/custom.sh (sourced before launch.sh, which changes to the repository root).
#
#   vimpac_stores ARG   prints one absolute path per line for ARG, a store or several joined by
#                       commas, taken relative to the caller's directory (a path that exists as
#                       given is kept whole, commas and all)
vimpac_stores() {
    local arg=$1 part
    local -a parts
    if [[ -e $arg ]]; then
        parts=("$arg")
    else
        IFS=, read -r -a parts <<< "$arg"
    fi
    for part in "${parts[@]}"; do
        [[ -n $part ]] && realpath -m -- "$part"
    done
}

#   vimpac_require USAGE PATH...   exits 2 naming the first PATH that does not exist, then USAGE
#                                  (nothing is checked under DRY_RUN=1)
vimpac_require() {
    local usage=$1 path
    shift
    [[ ${DRY_RUN:-0} == 1 ]] && return 0
    for path in "$@"; do
        [[ -e $path ]] || { echo "custom.sh: error: $path does not exist" >&2; echo "$usage" >&2; exit 2; }
    done
}
