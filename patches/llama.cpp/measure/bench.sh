#!/bin/bash
# Alternate unpatched (lib-base) and patched (lib-win) libmtmd, one process per sample.
# stdin: lines "W H FA PAIRS RUNS"; env: MODEL_DIR (bench preset gguf/bf16), ENC (scratch dir
# holding lib-base/, lib-win/ and the llama.cpp build), THREADS (default 2; 1 = CPU-time runs).
M=${MODEL_DIR:-/tmp/enc/bench/bench-t2-v8/gguf/bf16}
ENC=${ENC:-/tmp/enc}
run() {
  echo -n "{\"build\":\"$1\",\"r\":"
  LD_LIBRARY_PATH=$ENC/lib-$1:$ENC/src/build/bin timeout 900 "$(dirname "$0")/encbench" \
    "$M/mmproj-bench-bf16.gguf" "$M/bench-bf16.gguf" "$2" "$3" "$5" "$4" "${THREADS:-2}" \
    2>/dev/null | tr -d '\n'
  echo ",\"load\":\"$(cut -d' ' -f1 /proc/loadavg)\",\"t\":\"$(date -u +%H:%M:%S)\"}"
}
while read -r W H FA PAIRS RUNS; do
  for i in $(seq "$PAIRS"); do
    if [ $((i % 2)) -eq 1 ]; then
      run base "$W" "$H" "$FA" "$RUNS"; run win "$W" "$H" "$FA" "$RUNS"
    else
      run win "$W" "$H" "$FA" "$RUNS"; run base "$W" "$H" "$FA" "$RUNS"
    fi
  done
done
