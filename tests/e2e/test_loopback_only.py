"""A local run listens on loopback only, even where the hostname resolves to a LAN address (issue #26
item 12). The test makes its own network + mount namespace (root, `unshare`): 192.0.2.2 on its
loopback device and an /etc/hosts mapping the hostname to it, as on a cloud VM; then it lists every
listening socket while the run is paused after round 1's training (trainer group, sync group and
engines all up)."""

from __future__ import annotations

import ipaddress
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

LAN = "192.0.2.2"

_SCRIPT = """
set -e
ip link set lo up
ip addr add {lan}/24 dev lo
printf '127.0.0.1 localhost\\n{lan} %s\\n' "$(hostname)" > {tmp}/hosts
mount --bind {tmp}/hosts /etc/hosts
getent hosts "$(hostname)" > {tmp}/resolved
SELFSTEER_TEST_PAUSE_AT=before_metrics@1 setsid {python} -m selfsteer.cli.main run configs/tiny_cpu.yaml rounds=1 \
    model.cache_dir={cache} tensorboard=false output_dir={tmp}/run > {tmp}/run.log 2>&1 &
run=$!
for i in $(seq 1200); do
    [ -e {tmp}/run/.paused-before_metrics ] && break
    kill -0 $run 2>/dev/null || {{ echo "run ended early"; tail -20 {tmp}/run.log; exit 3; }}
    sleep 0.5
done
[ -e {tmp}/run/.paused-before_metrics ] || {{ echo "run never paused"; exit 4; }}
ss -ltnpH > {tmp}/listeners
kill -9 -- -$run
sleep 3
"""


def _namespaces_allowed() -> bool:
    probe = subprocess.run(["unshare", "--net", "--mount", "true"], capture_output=True)
    return probe.returncode == 0


def test_local_run_listens_on_loopback_only_when_hostname_resolves_to_lan(tmp_path, toy_cache):
    if not _namespaces_allowed():
        pytest.skip("unshare --net --mount is not permitted here (needs root or user namespaces)")
    script = _SCRIPT.format(lan=LAN, tmp=tmp_path, python=sys.executable, cache=toy_cache)
    proc = subprocess.run(["unshare", "--net", "--mount", "bash", "-c", script], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert LAN in (tmp_path / "resolved").read_text()  # the hostname did resolve to the LAN address
    listeners = [line.split() for line in (tmp_path / "listeners").read_text().splitlines() if line.strip()]
    assert len(listeners) > 5  # Ray's, the trainer's stores and groups, the engines'
    exposed = []
    for fields in listeners:
        host = fields[3].rsplit(":", 1)[0].strip("[]").split("%")[0]
        address = None if host == "*" else ipaddress.ip_address(host)
        address = getattr(address, "ipv4_mapped", None) or address  # [::ffff:127.0.0.1]
        if address is None or not address.is_loopback:
            exposed.append(" ".join(fields[3:]))
    assert not exposed, f"{len(exposed)} of {len(listeners)} listeners not on loopback:\n" + "\n".join(exposed)
