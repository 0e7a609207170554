"""The object-store transport's receiving side: buckets put in Ray's object store by the trainer."""

from __future__ import annotations

from selfsteer.sync.buckets import fingerprint


def load_object_buckets(buckets: list, flats: list, load, verify: bool) -> list[str]:
    """Object-store path, receiving side: resolve each bucket, `load(bucket, flat)`; fingerprints."""
    import ray

    fingerprints = []
    for bucket, flat in zip(buckets, flats):
        flat = ray.get(flat) if isinstance(flat, ray.ObjectRef) else flat
        load(bucket, flat)
        if verify:
            fingerprints.append(fingerprint(flat))
    return fingerprints
