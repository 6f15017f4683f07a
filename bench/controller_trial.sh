#!/bin/bash
# Issue 14's trial, as a new user would run it: `jellybean up`, a workflow, an unrelated one on new
# sites that cannot fit (apply --wait exits 3 with the reason; the first is untouched), delete (its
# metric series leave), a rolling update on a full machine (stop-first). Run from the repository root
# after `make install`; it uses port 9477 for metrics and /tmp/trial for state.
set -u
D=/tmp/trial; rm -rf $D; mkdir -p $D
export JELLYBEAN_HOME=$D
JB=$PWD/.venv/bin/jellybean
$JB up --state-dir $D --port 0 --metrics-port 9477 > $D/up.log 2>&1 &
UP=$!
trap 'kill $UP 2>/dev/null; wait $UP 2>/dev/null' EXIT
for i in $(seq 90); do [ -f $D/controller.json ] && break; sleep 1; done
t() { local s=$(date +%s.%N); "$@"; local rc=$?; printf '[exit %s after %.1f s]\n' $rc "$(echo "$(date +%s.%N) - $s" | bc)"; }
echo "== 1. apply digits --wait 120"; t $JB apply -f workflows/digits --wait 120
sleep 5
$JB status digits --format json > $D/digits-before.json
mkdir -p $D/second
sed -e 's/name: digits-local/name: store-b/' -e 's/name: cloud$/name: cloud-b/' -e 's/parent: cloud$/parent: cloud-b/' \
    -e 's/name: hub$/name: hub-b/' -e 's/parent: hub$/parent: hub-b/' -e 's/name: cam-1$/name: cam-b1/' \
    -e 's/name: cam-2$/name: cam-b2/' workflows/digits/topology.yaml > $D/second/topology.yaml
sed -e 's/name: digits$/name: digits-b/' -e 's/topology: digits-local/topology: store-b/' \
    -e 's/sites: \[cam-1, cam-2\]/sites: [cam-b1, cam-b2]/' workflows/digits/workflow.yaml > $D/second/workflow.yaml
cp workflows/digits/zoo.yaml $D/second/
echo "== 2. apply digits-b: its own topology (new sites; Ray has no CPUs left) --wait 60"; t $JB apply -f $D/second --wait 60
echo "== status"; $JB status
echo "== status digits-b"; $JB status digits-b | tail -12
$JB status digits --format json > $D/digits-after.json
python3 - <<'PY'
import json
b=json.load(open("/tmp/trial/digits-before.json")); a=json.load(open("/tmp/trial/digits-after.json"))
print("digits phase before/after:", b.get("phase"), a.get("phase"))
for k in ("started_at","generation","digest"):
    print(f"  {k}: {b.get(k)} -> {a.get(k)}")
print("  frames before:", b.get("frames"), "\n  frames after: ", a.get("frames"))
PY
echo "== metrics series naming digits-b before delete:"; curl -s localhost:9477/metrics | grep -c 'workflow="digits-b"'
echo "== 3. delete digits-b --wait 60"; t $JB delete digits-b --wait 60
echo "== metrics series naming digits-b after delete:"; curl -s localhost:9477/metrics | grep -c 'workflow="digits-b"'
echo "== metrics series naming digits:"; curl -s localhost:9477/metrics | grep -c 'workflow="digits"'
echo "== 4. rolling update of digits on a full machine (rate 40 -> 30 frames/s) --wait 180"
mkdir -p $D/digits2 && cp workflows/digits/*.yaml $D/digits2/ && sed -i 's/rate_per_s: 40/rate_per_s: 30/' $D/digits2/workflow.yaml
t $JB apply -f $D/digits2 --wait 180
echo "== status digits"; $JB status digits
echo "== 5. delete digits --wait 60"; t $JB delete digits --wait 60
