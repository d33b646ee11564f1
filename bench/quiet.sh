#!/usr/bin/env bash
# Runs a command (default: bench/run.sh with the binaries already built) while
# other work on this shared machine is paused: compilers, linkers and test
# binaries are SIGSTOPped every second for as long as the command runs, and
# always SIGCONTed afterwards (also on error or Ctrl-C). Never touches the
# bench's own processes (aigne-hub, aigne-hub-bench, postgres, psql, bash).
#
#   CARGO_TARGET_DIR=/work/bench-target bash bench/quiet.sh            # bench/run.sh, build skipped
#   bash bench/quiet.sh some other command ...
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Process names (comm, at most 15 characters) of other people's work.
PATTERN='rustc|cargo|cc1|cc1plus|ld|cc|ld.lld|collect2|as|rustdoc|clippy-driver|[a-z_]+-[0-9a-f]{6,}'
STOPPED_FILE=$(mktemp -t quiet-stopped.XXXXXX)

resume_all() {
  # Everything this script stopped, by pid; then anything matching, in case.
  if [[ -s "$STOPPED_FILE" ]]; then
    sort -u "$STOPPED_FILE" | while read -r pid; do kill -CONT "$pid" 2>/dev/null || true; done
  fi
  pkill -CONT -x "$PATTERN" 2>/dev/null || true
  rm -f "$STOPPED_FILE"
}

if [[ $# -eq 0 ]]; then
  set -- env AIGNE_BENCH_SKIP_BUILD=1 bash bench/run.sh
fi

"$@" &
CMD_PID=$!
trap 'resume_all' EXIT
trap 'kill -TERM $CMD_PID 2>/dev/null; exit 130' INT TERM

(
  while kill -0 "$CMD_PID" 2>/dev/null; do
    for pid in $(pgrep -x "$PATTERN" 2>/dev/null); do
      [[ "$pid" == "$CMD_PID" ]] && continue
      if kill -STOP "$pid" 2>/dev/null; then echo "$pid" >>"$STOPPED_FILE"; fi
    done
    sleep 1
  done
) &
PAUSER_PID=$!

wait "$CMD_PID"
status=$?
kill "$PAUSER_PID" 2>/dev/null
wait "$PAUSER_PID" 2>/dev/null
resume_all
trap - EXIT
exit "$status"
