# Sourced by compress_default.sh and compress_flow.sh. `ship_selected OUT DEST`: when the sweep
# in OUT selected a candidate other than the teacher, it replaces the bundle DEST with that
# candidate's calibrated bundle and the sweep's report, keeping DEST's model card and
# refreshing the card's figures from the new report.
ship_selected() {
  local out="$1" dest="$2" sel
  sel=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["selected"] or "")' "$out/report.json")
  if [ -n "$sel" ] && [ "$sel" != teacher ]; then
    rm -rf "$dest.new"
    cp -r "$out/candidates/$sel/calibrated" "$dest.new"
    cp "$out/report.json" "$dest.new/compress_report.json"
    [ -f "$dest/MODEL_CARD.md" ] && cp "$dest/MODEL_CARD.md" "$dest.new/"
    rm -rf "$dest" && mv "$dest.new" "$dest"
    [ -f "$dest/MODEL_CARD.md" ] && python3 scripts/compress_card.py \
      "$dest/compress_report.json" --update "$dest/MODEL_CARD.md" >/dev/null
    echo "shipped $sel as $dest"
  fi
  return 0
}
