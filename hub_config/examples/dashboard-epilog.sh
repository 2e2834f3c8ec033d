#!/bin/sh
# Slurm Epilog (slurm.conf: Epilog=/etc/slurm/dashboard-epilog.sh), run as root by slurmd
# on the node after a job ends: removes the iptables rule and the file of the dashboard
# ports dashboard-prolog.sh reserved for the job (nothing for a job that had none).
# PYTHON and DASHBOARDS as in dashboard-prolog.sh.
PYTHON=/opt/shangzhuang/bin/python3
DASHBOARDS=/run/shangzhuang/dashboards
PATH=/usr/sbin:/usr/bin:/sbin:/bin  # slurmd runs it with no PATH; iptables is in sbin
export PATH

[ -e "$DASHBOARDS/$SLURM_JOB_ID" ] || exit 0
exec "$PYTHON" -m shangzhuang.hub.containment slurm-epilog --folder "$DASHBOARDS"
