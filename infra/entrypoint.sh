#!/bin/sh
# The pipeline image's entrypoint. In the indexed training Job (infra/k8s/gpu-work-pool.json) every
# pod gets the same command, Prefect's `prefect flow-run execute`; pod 0 runs it (the `train` flow
# launches torchrun as one node of the job), and the other pods join that torchrun rendezvous as
# worker nodes. Anywhere else (no JOB_COMPLETION_INDEX) the command runs as given.
set -e
if [ -n "${JOB_COMPLETION_INDEX:-}" ] && [ "$JOB_COMPLETION_INDEX" != "0" ]; then
  exec vitsflow train-node
fi
exec "$@"
