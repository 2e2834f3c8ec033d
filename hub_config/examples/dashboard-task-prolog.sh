#!/bin/sh
# Slurm TaskProlog (slurm.conf: TaskProlog=/etc/slurm/dashboard-task-prolog.sh), run by
# slurmstepd as the job's owner before each of its tasks: a line "export NAME=VALUE" on
# its output sets NAME in the task's environment. A Lab session's shangzhuang.cluster()
# serves its dashboards on the ports of SHANGZHUANG_DASHBOARD_PORTS (dashboard-prolog.sh
# kept them to this account). DASHBOARDS as in dashboard-prolog.sh.
DASHBOARDS=/run/shangzhuang/dashboards

if [ -r "$DASHBOARDS/$SLURM_JOB_ID" ]; then
    echo "export SHANGZHUANG_DASHBOARD_PORTS=$(cat "$DASHBOARDS/$SLURM_JOB_ID")"
fi
