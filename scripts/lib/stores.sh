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
