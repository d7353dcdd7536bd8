#!/bin/bash
# One node's share of a multi-node torchrun launch; slurm/train.sbatch runs it on every node with
#
#   srun --nodes=N --ntasks=N --ntasks-per-node=1 bash slurm/torchrun_node.sh TORCHRUN-OPTIONS -m MODULE ARGS...
#
# The workers per node are computed here, on each node, from what SLURM gave the job on that node
# (SLURM_GPUS_ON_NODE and friends, else one per allocated CPU; NPROC_PER_NODE overrides), not once on
# the batch host: nodes with different GPU counts each start their own number of workers (torchrun's
# c10d rendezvous adds them up). Threads per worker and DeepSpeed's CPU accelerator are set per node too.
# The script then *becomes* torchrun (exec), so the process under slurmstepd is torchrun itself: that
# is the process train.sbatch's stop handler signals.
set -uo pipefail

if [ -z "${NER_TAGGERS_DIR:-}" ] || [ ! -f "$NER_TAGGERS_DIR/slurm/env.sh" ]; then
    echo "torchrun_node.sh: NER_TAGGERS_DIR (the ner-taggers checkout) is not set" >&2
    exit 2
fi
# shellcheck source=slurm/env.sh
source "$NER_TAGGERS_DIR/slurm/env.sh"

GPUS="$(ner_gpus_on_node)"
NPROC="$(ner_nproc_per_node)"
ner_set_threads "$NPROC"
# DeepSpeed picks its accelerator itself; without GPUs tell it to use the CPU one
[ "$GPUS" -gt 0 ] || export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"
ner_log "node ${SLURM_NODEID:-0} ($(hostname -s)): procs/node=${NPROC} gpus/node=${GPUS}" \
        "threads/proc=${OMP_NUM_THREADS}"

# shellcheck disable=SC2086  # TORCHRUN is a command line ("python -m torch.distributed.run")
exec $TORCHRUN --nproc_per_node="$NPROC" "$@"
