#!/usr/bin/env bash
idle() { python3 -c '
import time
def s():
    v=list(map(int,open("/proc/stat").readline().split()[1:])); return v[3]+v[4], sum(v)
a=s(); time.sleep(1.5); b=s(); print(int(100*(b[0]-a[0])/(b[1]-a[1])))'; }
PORT=$(cat /root/begress/port)
d() { # bin sock ctx flag
  $1/ctx --socket $2 exec --context $3 -- sh -c "for i in 1 2 3; do curl -sS $4 -o /dev/null -w '%{speed_download}\n' http://bench-x.egress.test:$PORT/big1g; done" | awk '{printf "%.0f ", $1/1e6}'; }
for i in $(seq $1); do
for t in $(seq 300); do [ "$(idle)" -ge 95 ] && break; done
echo "### $(date +%T)"
echo "direct:   $(d /work/wt-egress/target/release /root/begress/broker.sock direct '')"
echo "reno -p:  $(d /work/wt-egress/target/release /root/begress/broker.sock egress -p)"
echo "qa -p:    $(d /tmp/egress-qa /root/begress/qa.sock egress -p)"
echo "reno abs: $(d /work/wt-egress/target/release /root/begress/broker.sock egress '')"
echo "qa abs:   $(d /tmp/egress-qa /root/begress/qa.sock egress '')"
done
