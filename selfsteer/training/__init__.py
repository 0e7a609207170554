"""Training backends behind one interface: DeepSpeed ZeRO engines, or plain torch (all-reduce)."""

from selfsteer.training.base import TrainBackend, make_train_backend

__all__ = ["TrainBackend", "make_train_backend"]
