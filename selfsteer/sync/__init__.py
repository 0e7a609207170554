"""Weight transport, independent of Ray roles: trainer rank 0's weights into engines and actors.

    buckets      the bucket plan, packing/unpacking, reusable flat buffers, fingerprints, named copies
    collective   the standalone broadcast group (gloo on CPU, NCCL on GPU) and its store
    objectstore  loading buckets that came through Ray's object store
    shm          placement=colocated on CPU: one /dev/shm segment trainer rank 0 writes, engines read in place
    cuda_ipc     placement=colocated on GPU: engines map the trainer's CUDA buckets by IPC handle

`selfsteer.actors.syncer.WeightSyncer` drives a sync over these; the engines import them directly.
"""
