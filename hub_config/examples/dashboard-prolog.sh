#!/bin/sh
# Slurm Prolog (slurm.conf: Prolog=/etc/slurm/dashboard-prolog.sh), run as root by slurmd
# on the node before a job starts. For a Shangzhuang Lab session (job comment
# "shangzhuang-lab", set by the hub's SlurmSpawner) it reserves a block of 8 loopback ports
# in 61000-65535 for the session's Dask dashboards and adds an iptables rule (chain
# SHANGZHUANG-SLURM) refusing connections to them from every other account on the node.
# The block is written to $DASHBOARDS/$SLURM_JOB_ID, readable by the job's owner only;
# dashboard-task-prolog.sh hands it to the job. Other jobs: nothing is done.
# A failure exits non-zero, so Slurm drains the node rather than run the session open.
# Set PYTHON to the Python that has shangzhuang installed on the nodes.
PYTHON=/opt/shangzhuang/bin/python3
DASHBOARDS=/run/shangzhuang/dashboards
PATH=/usr/sbin:/usr/bin:/sbin:/bin  # slurmd runs it with no PATH; iptables is in sbin
export PATH

[ "$SLURM_JOB_COMMENT" = "shangzhuang-lab" ] || exit 0
exec "$PYTHON" -m shangzhuang.hub.containment slurm-prolog --folder "$DASHBOARDS"
