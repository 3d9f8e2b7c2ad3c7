#!/usr/bin/env bash
# Byte-identity of the CLI's outputs against a reference binary (issue 20: the streamed writer
# must write what the buffered one wrote).
#
#   scripts/compare_ref.sh REF_BIN [NEW_BIN] [MODELS_DIR]
#
# For every model in MODELS_DIR (default ../shared/models) runs both binaries with the default
# options, `--fast`, `--no-verify`, `--no-verify --compat aimet`, `--no-verify --scaling noise`,
# and `--no-verify` with the int8 outputs (`--qdq-output`, `--deploy-output`, `--encodings`),
# and compares every output file with `cmp`, the JSON report less its `timings_ms`, and the exit
# codes. NEW_BIN defaults to $CARGO_TARGET_DIR/release/onnx-cle. Exits 1 on any difference.
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
REF="${1:?usage: compare_ref.sh REF_BIN [NEW_BIN] [MODELS_DIR]}"
NEW="${2:-${CARGO_TARGET_DIR:-$HOME/.cache/onnx-cle-target-release}/release/onnx-cle}"
MODELS="${3:-$ROOT/../shared/models}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/onnx-cle-compare.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

fail=0; checked=0
run() { # run NAME BIN MODEL ARGS...
    local dir="$WORK/$1"; shift
    local bin="$1" model="$2"; shift 2
    mkdir -p "$dir"
    "$bin" equalize -q "$model" -o "$dir/model.onnx" --report "$dir/report.full" "$@" \
        >/dev/null 2>"$dir/stderr"
    echo $? > "$dir/rc"
    # The report less its timings (the only field that may differ between two runs).
    [[ -e "$dir/report.full" ]] && python3 -c 'import json, sys
r = json.load(open(sys.argv[1])); r.pop("timings_ms", None)
print(json.dumps(r, sort_keys=True, indent=1))' "$dir/report.full" > "$dir/report.txt"
    rm -f "$dir/report.full"
}
for model in "$MODELS"/*.onnx; do
    name="$(basename "$model" .onnx)"
    for variant in default fast no-verify aimet noise int8; do
        case "$variant" in
            default) args=() ;;
            fast) args=(--fast) ;;
            no-verify) args=(--no-verify) ;;
            aimet) args=(--no-verify --compat aimet) ;;
            noise) args=(--no-verify --scaling noise) ;;
            int8) args=(--no-verify --qdq-output "@/qdq.onnx" --deploy-output "@/deploy.onnx" --encodings "@/encodings.json") ;;
        esac
        for side in ref new; do
            bin="$REF"; [[ $side == new ]] && bin="$NEW"
            rm -rf "$WORK/$side"
            run "$side" "$bin" "$model" "${args[@]//@/$WORK/$side}"
        done
        diffs=""
        cmp -s "$WORK/ref/rc" "$WORK/new/rc" || diffs+=" exit($(cat "$WORK/ref/rc") vs $(cat "$WORK/new/rc"))"
        for f in "$WORK"/ref/*.onnx "$WORK"/ref/*.json "$WORK"/ref/*.txt; do
            [[ -e "$f" ]] || continue
            b="$(basename "$f")"
            cmp -s "$f" "$WORK/new/$b" || diffs+=" $b"
        done
        for f in "$WORK"/new/*.onnx "$WORK"/new/*.json "$WORK"/new/*.txt; do
            [[ -e "$f" && ! -e "$WORK/ref/$(basename "$f")" ]] && diffs+=" extra:$(basename "$f")"
        done
        checked=$((checked + 1))
        if [[ -n "$diffs" ]]; then
            fail=1
            echo "DIFFERENT $name $variant:$diffs"
        else
            echo "identical $name $variant (exit $(cat "$WORK/ref/rc"), $(ls "$WORK/ref" | grep -cv -e rc -e stderr) files)"
        fi
    done
done
echo "$checked comparisons, $([[ $fail == 0 ]] && echo "all identical" || echo "DIFFERENCES")"
exit $fail
