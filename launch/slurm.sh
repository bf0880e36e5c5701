#!/bin/bash
# LLaMA-65B on 256 nodes x 8 GPUs = 2048 GPUs, the paper's scale (Touvron et al. 2023, 2.4).
# Submit with `sbatch launch/slurm.sh`; edit the #SBATCH lines, WORKDIR and the mesh for your
# cluster. One task per node: each JAX process drives its node's 8 GPUs, and
# llama_jax.distributed finds the coordinator (the first node) in SLURM's environment.
#SBATCH --job-name=llama-65b
#SBATCH --nodes=256
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=96
#SBATCH --exclusive
#SBATCH --time=48:00:00
#SBATCH --signal=TERM@300
#SBATCH --output=%x-%j.out
#SBATCH --requeue
set -uo pipefail

WORKDIR=${WORKDIR:-/checkpoints/llama-65b}
CONFIG=${CONFIG:-configs/65b.py}
MAX_REQUEUES=${MAX_REQUEUES:-20}

# Memory: let XLA take what it needs instead of preallocating 75%; NCCL over InfiniBand.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export NCCL_IB_DISABLE=0

# `tensor` inside a node (NVLink), FSDP across nodes; check the fit first with
#   python -m llama_jax.plan --config=configs/65b.py --mesh=data=1,fsdp=-1,tensor=8 --devices=2048
# SIGTERM (--signal above, or preemption) reaches every task: training saves and exits cleanly,
# and resubmitting the same script resumes from the latest checkpoint in WORKDIR.
# A dead node: its heartbeats stop, every other process exits within --heartbeat_timeout_seconds
# naming it, srun fails, and the job is requeued; the new allocation resumes from the last good
# checkpoint in WORKDIR.
srun --kill-on-bad-exit=1 python -m llama_jax.train \
  --config="$CONFIG" --workdir="$WORKDIR" --heartbeat_timeout_seconds=300 \
  --config.mesh.data=1 --config.mesh.fsdp=-1 --config.mesh.tensor=8 "$@"
status=$?
if (( status != 0 && ${SLURM_RESTART_COUNT:-0} < MAX_REQUEUES )); then
  echo "training exited with $status; requeueing (restart ${SLURM_RESTART_COUNT:-0} of $MAX_REQUEUES)"
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
