#!/usr/bin/env bash
# One device call: onnxruntime-gpu (parts already in /tmp/ortw), wheels, the project; then the end-to-end
# CNN benchmark (bench/e2e_cnn.py). Logs and JSON in $OUT; the table prints last.
source "$(dirname "$0")/device_env.sh"
cd /tmp
timeout "${E2E_TIMEOUT:-540}" python3 "$REPO/bench/e2e_cnn.py" --out "$OUT" "$@" 2>&1 | grep -v "^\[\|Warning\|warn(" | tee "$OUT/e2e.log" | tail -60
