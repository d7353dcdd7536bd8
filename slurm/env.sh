# Shared environment for slurm/train.sbatch and slurm/tag.sbatch (sourced, not run).
#
# Every setting keeps a value that is already in the environment, so anything here can be
# changed per job with `sbatch --export=ALL,NAME=value ...` or by exporting it before `sbatch`
# (sbatch passes the submitting shell's environment to the job by default).
# No paths, ports or accounts are hard-coded: paths default to places relative to the
# submit directory / the checkout, ports are derived from the job id.
#
# Expects NER_TAGGERS_DIR (the checkout holding slurm/ and the python packages) to be set by the
# caller; falls back to the folder above this file.

if [ -z "${NER_TAGGERS_DIR:-}" ]; then
    NER_TAGGERS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fi
export NER_TAGGERS_DIR

# ---------------------------------------------------------------- python
# NER_VENV: a virtualenv to activate; otherwise <checkout>/.venv if it exists and no
# virtualenv/conda env is active already. NER_CONDA_ENV: a conda env to activate instead.
if [ -n "${NER_CONDA_ENV:-}" ] && command -v conda >/dev/null 2>&1; then
    eval "$(conda shell.bash hook)" && conda activate "$NER_CONDA_ENV"
elif [ -n "${NER_VENV:-}" ]; then
    # shellcheck disable=SC1091
    source "$NER_VENV/bin/activate"
elif [ -z "${VIRTUAL_ENV:-}" ] && [ -z "${CONDA_PREFIX:-}" ] && [ -f "$NER_TAGGERS_DIR/.venv/bin/activate" ]; then
    # shellcheck disable=SC1091
    source "$NER_TAGGERS_DIR/.venv/bin/activate"
fi
export PYTHON="${PYTHON:-python}"
# `python -m train` / `-m infer` work from any directory even when the project is not installed
# (once: slurm/torchrun_node.sh sources this file again inside the job's steps)
case ":${PYTHONPATH:-}:" in
    *":$NER_TAGGERS_DIR:"*) ;;
    *) export PYTHONPATH="$NER_TAGGERS_DIR${PYTHONPATH:+:$PYTHONPATH}" ;;
esac
export PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"

# torchrun from the active environment (a module run, so it is the same torch as $PYTHON)
if [ -z "${TORCHRUN:-}" ]; then
    TORCHRUN="$PYTHON -m torch.distributed.run"   # == torchrun
fi

# ---------------------------------------------------------------- distributed
# Torch version the scripts need: 2.12 or newer (tested with 2.13). torchrun reads
# TORCH_ELASTIC_SHUTDOWN_TIMEOUT since torch 2.12 (torch/distributed/launcher/api.py, LaunchConfig;
# the same setting as `torchrun --shutdown-timeout`, pytorch/pytorch PR #172596). Older torchrun ignores
# the variable and SIGKILLs its workers 30 s after forwarding SIGTERM, which cuts off a checkpoint that
# takes longer. The scripts log a warning on older torch (ner_check_torch below).
NER_TORCH_MIN="2.12"
# Seconds torchrun gives its workers after forwarding SIGTERM before it SIGKILLs them. train.sbatch's
# stop budget (see its header: --signal lead 300 s >= this + NODE_EXIT_GRACE + 80 s) relies on it;
# tag.sbatch sets 30 s before sourcing this file (its lead is 60 s).
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-100}"
export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
# NER_NET_IFNAME: the network interface between nodes (e.g. ib0, eth0) for NCCL and gloo;
# unset lets them choose.
if [ -n "${NER_NET_IFNAME:-}" ]; then
    export NCCL_SOCKET_IFNAME="${NCCL_SOCKET_IFNAME:-$NER_NET_IFNAME}"
    export GLOO_SOCKET_IFNAME="${GLOO_SOCKET_IFNAME:-$NER_NET_IFNAME}"
fi

# DeepSpeed compiles its ops on first use; build them on node-local disk, per user
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-${TMPDIR:-/tmp}/torch_extensions_$(id -un)}"

# ---------------------------------------------------------------- logging
# Compute nodes are often offline: log locally, upload later with `wandb sync` (docs/cluster.md)
export WANDB_MODE="${WANDB_MODE:-offline}"
export WANDB_SILENT="${WANDB_SILENT:-true}"

# ---------------------------------------------------------------- helpers
# CPUs this job has on this node
ner_cpus_on_node() {
    if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
        echo $(( SLURM_CPUS_PER_TASK * ${SLURM_NTASKS_PER_NODE:-1} ))
    elif [ -n "${SLURM_CPUS_ON_NODE:-}" ]; then
        echo "$SLURM_CPUS_ON_NODE"
    else
        nproc
    fi
}

# GPUs SLURM gave this job on this node (0 when none). SLURM_GPUS_ON_NODE is set for
# --gpus-per-node / --gres=gpu:N / --gpus; SLURM_GPUS_PER_NODE may read "a100:4".
ner_gpus_on_node() {
    local n="${SLURM_GPUS_ON_NODE:-}"
    if [ -z "$n" ] && [ -n "${SLURM_GPUS_PER_NODE:-}" ]; then
        n="${SLURM_GPUS_PER_NODE##*:}"
    fi
    if [ -z "$n" ] && [ -n "${SLURM_JOB_GPUS:-}" ]; then
        n=$(echo "$SLURM_JOB_GPUS" | tr ',' '\n' | grep -c .)
    fi
    case "$n" in ''|*[!0-9]*) n=0 ;; esac
    echo "$n"
}

# Processes per node: NPROC_PER_NODE if set, else one per GPU, else one per CPU
# (cap with NPROC_PER_NODE for CPU runs on big nodes).
ner_nproc_per_node() {
    if [ -n "${NPROC_PER_NODE:-}" ]; then
        echo "$NPROC_PER_NODE"
        return
    fi
    local g
    g=$(ner_gpus_on_node)
    if [ "$g" -gt 0 ]; then
        echo "$g"
    else
        ner_cpus_on_node
    fi
}

# A port for torchrun's rendezvous (the c10d store on the head node): the same on every node of a job,
# different between jobs that may share a head node: NER_PORT_BASE + job id % NER_PORT_SPAN, by default
# 20000..31999. It stays below Linux's ephemeral port range (net.ipv4.ip_local_port_range, 32768-60999
# by default), from which the kernel picks the local port of every outgoing connection (NCCL, gloo and
# the store's own clients open many): a port in that range may be taken on the head node by such a
# connection at the moment the store tries to listen on it, and the rendezvous fails.
ner_port() {
    local id="${SLURM_JOB_ID:-$$}"
    echo $(( ${NER_PORT_BASE:-20000} + id % ${NER_PORT_SPAN:-12000} ))
}

# Warn when PORT lies in this node's ephemeral port range (NER_PORT_BASE/NER_PORT_SPAN set too high,
# or a site that moved the range down).
ner_check_port() {
    local port="$1" lo hi
    read -r lo hi < /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || return 0
    if [ "$port" -ge "$lo" ] && [ "$port" -le "$hi" ]; then
        ner_log "warning: rendezvous port ${port} is in this node's ephemeral port range ${lo}-${hi};" \
                "it may be taken by an outgoing connection. Set NER_PORT_BASE/NER_PORT_SPAN below ${lo}."
    fi
}

# The address the other nodes reach the head node HEAD at (IPv4), for torchrun's --rdzv_endpoint:
# NER_RDZV_HOST if set; else the first non-loopback address of `getent ahostsv4 HEAD`; else the first
# non-loopback one of `hostname --ip-address` run on HEAD itself (a one-task srun step, as torchtitan's
# multinode script does); else HEAD's name (fine on one node; on several, a loopback address would make
# the other nodes dial themselves, so set NER_RDZV_HOST or fix the name service then).
# Prints "ADDRESS METHOD".
ner_head_address() {
    local head="$1" addr
    if [ -n "${NER_RDZV_HOST:-}" ]; then
        echo "$NER_RDZV_HOST NER_RDZV_HOST"
        return
    fi
    addr=$(getent ahostsv4 "$head" 2>/dev/null | awk '$1 !~ /^127\./ {print $1; exit}')
    if [ -n "$addr" ]; then
        echo "$addr getent"
        return
    fi
    addr=$(timeout 60 srun --overlap --nodes=1 --ntasks=1 --cpus-per-task=1 -w "$head" \
               hostname --ip-address 2>/dev/null \
           | tr ' ' '\n' | awk 'NF && $1 !~ /^127\./ && $1 != "::1" {print $1; exit}')
    if [ -n "$addr" ]; then
        echo "$addr srun-hostname"
        return
    fi
    echo "$head hostname"
}

# Log the python environment's torch version; warn when it is older than NER_TORCH_MIN
# (see TORCH_ELASTIC_SHUTDOWN_TIMEOUT).
ner_check_torch() {
    local v major minor need_major need_minor
    v=$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null) || {
        ner_log "warning: no torch in the python environment ($PYTHON)"; return 0; }
    major=${v%%.*}; minor=${v#*.}; minor=${minor%%[!0-9]*}
    need_major=${NER_TORCH_MIN%%.*}; need_minor=${NER_TORCH_MIN#*.}
    if [ "$major" -lt "$need_major" ] || { [ "$major" -eq "$need_major" ] && [ "$minor" -lt "$need_minor" ]; }; then
        ner_log "warning: torch ${v} is older than ${NER_TORCH_MIN}: torchrun ignores" \
                "TORCH_ELASTIC_SHUTDOWN_TIMEOUT and kills the workers 30 s after SIGTERM, which can cut off" \
                "the stop checkpoint"
    else
        ner_log "torch ${v} (>= ${NER_TORCH_MIN} needed)"
    fi
}

# Threads per process so that the processes on a node share its CPUs
ner_set_threads() {
    local nproc="$1" cpus t
    cpus=$(ner_cpus_on_node)
    t=$(( cpus / (nproc > 0 ? nproc : 1) ))
    [ "$t" -ge 1 ] || t=1
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$t}"
    export MKL_NUM_THREADS="${MKL_NUM_THREADS:-$OMP_NUM_THREADS}"
}

ner_log() {
    local id="${SLURM_JOB_ID:-?}"
    [ -n "${SLURM_ARRAY_JOB_ID:-}" ] && id="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
    echo "[$(date '+%F %T')] ${SLURM_JOB_NAME:-ner}[${id}]: $*"
}
