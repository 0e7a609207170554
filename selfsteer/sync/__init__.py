"""Weight transport, independent of Ray roles: trainer rank 0's weights into engines and actors.

    buckets      the bucket plan, packing/unpacking, reusable flat buffers, fingerprints, named copies
    collective   the standalone broadcast group (gloo on CPU, NCCL on GPU) and its store
    objectstore  loading buckets that came through Ray's object store
    shm          placement=colocated on CPU: a bounded pool of bucket slots in /dev/shm (POOL_SLOTS), refilled
                 once every engine loaded the bucket in it; engines read in place
    cuda_ipc     placement=colocated on GPU: the same pool as CUDA slots, mapped by the engines by IPC handle

`selfsteer.actors.syncer.WeightSyncer` drives a sync over these; the engines import them directly.
"""
