#!/usr/bin/env bash
# Record the transcripts of this directory again (after a change of the
# transcript format or of config.toml): `bash golden/transcripts/record.sh`
# from the repository root. Runs `autobiz run` against `autobiz fakes serve`
# in a scratch directory, with test credentials only, and writes
# wf08-completed.jsonl, wf08-two-approvals.jsonl and
# wf08-killed-and-resumed.jsonl here. Then `cargo nextest run --test
# transcripts` proves they replay.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cargo build -q --manifest-path "$root/Cargo.toml" --bin autobiz
bin="$root/target/debug/autobiz"
work="$(mktemp -d)"
fakes_pid=""
cleanup() {
  if [[ -n "$fakes_pid" ]]; then kill "$fakes_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"

"$bin" --format json fakes serve >fakes.json &
fakes_pid=$!
for _ in $(seq 100); do [[ -s fakes.json ]] && break; sleep 0.1; done
url() { python3 -c "import json,sys; print(next(f['url'] for f in json.load(open('fakes.json'))['fakes'] if f['provider']=='$1'))"; }
export AUTOBIZ_STRIPE_URL="$(url stripe)" AUTOBIZ_SHOPIFY_URL="$(url shopify)"
export AUTOBIZ_PRINTFUL_URL="$(url printful)" AUTOBIZ_SENDGRID_URL="$(url sendgrid)"
export AUTOBIZ_TENANT=acme AUTOBIZ_CONFIG="$here/config.toml"
export AUTOBIZ_MASTER_KEY="AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
unset AUTOBIZ_DATABASE_URL AUTOBIZ_SECRETS_FILE

setup() {
  rm -rf .autobiz
  "$bin" -q db migrate >/dev/null
  for kv in STRIPE_SECRET_KEY=sk_test_golden SHOPIFY_ACCESS_TOKEN=shpat_test PRINTFUL_API_TOKEN=pf_test SENDGRID_API_KEY=SG.test; do
    printf '%s' "${kv#*=}" | "$bin" -q secrets set "${kv%%=*}" >/dev/null
  done
}
setup
event() { printf '{"order_id":"%s","amount":%s,"currency":"%s","email":"%s"}' "$1" "$2" "$3" "$4" >"$1.json"; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin).get('$1') or '')"; }

# 1. An uninterrupted run.
event rec-1 4200 usd ann@example.com
"$bin" -q run WF08 --event rec-1.json --run-id completed --transcript completed.jsonl >/dev/null

# 2. Over the HITL thresholds: paused before the authorization and before
# the capture, approved twice.
event rec-2 90000 usd bob@example.com
waiting="$("$bin" --format json run WF08 --event rec-2.json --run-id approved --transcript approved.jsonl | field waiting_for)"
while [[ -n "$waiting" ]]; do
  "$bin" -q hitl approve "$waiting" --approver ops-lead >/dev/null
  waiting="$("$bin" --format json run --resume approved | field waiting_for)"
done

# 3. Killed with SIGKILL as soon as its first step's response is written,
# then resumed.
event rec-3 1500 eur cy@example.com
for attempt in 1 2 3 4 5; do
  rm -f resumed.jsonl
  "$bin" -q run WF08 --event rec-3.json --run-id "resumed" --transcript resumed.jsonl >/dev/null &
  run_pid=$!
  while kill -0 "$run_pid" 2>/dev/null; do
    if [[ -f resumed.jsonl ]] && grep -q '"tool_response"' resumed.jsonl; then
      kill -9 "$run_pid" 2>/dev/null || true
      break
    fi
    sleep 0.002
  done
  wait "$run_pid" 2>/dev/null || true
  if [[ -f resumed.jsonl ]] && ! grep -q '"run_end"' resumed.jsonl; then
    "$bin" -q run --resume resumed >/dev/null
    break
  fi
  echo "attempt $attempt: the run finished before it was killed; again" >&2
  # Start over with a fresh store.
  setup
done
grep -q '"resumed"' resumed.jsonl || { echo "could not kill the run mid-way" >&2; exit 1; }

cp completed.jsonl "$here/wf08-completed.jsonl"
cp approved.jsonl "$here/wf08-two-approvals.jsonl"
cp resumed.jsonl "$here/wf08-killed-and-resumed.jsonl"
for f in wf08-completed wf08-two-approvals wf08-killed-and-resumed; do
  "$bin" replay "$here/$f.jsonl"
done
