"""A small autoregressive reference model per data set, trained in-repo: the judge behind the
``reference_perplexity`` metric (perplexity of generated samples under this model; it is NOT
"GPT-2 generative perplexity": no pretrained external LM is used).

:class:`CausalLM` is a pre-LayerNorm causal transformer (learned positions, a BOS token with id
``vocab_size``) of 0.17-0.36 M parameters (:data:`LM_CONFIGS`). It is trained with the project's
shared loop (:func:`workbench.training.train`: EMA, atomic resumable checkpoints in
``out_dir/state.pt``) on the train split's batch sampler with the next-token loss
:class:`NextTokenLoss`, one CPU thread. The EMA weights ship as
``checkpoints/{dataset}_ar.safetensors`` (metadata: the model config, steps, training seconds,
test perplexity and the unigram baseline). Regenerate one with::

    nice -n 10 env OMP_NUM_THREADS=1 python -m domains.sequences.reference_lm --dataset dna

(see ``checkpoints/README.md`` for the numbers).
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workbench.checkpoint import CheckpointError, load_weights, load_state_into, save_weights
from workbench.losses import Batch

from . import data as D

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"

#: architecture per data set (``max_len``: the longest sequence it scores)
LM_CONFIGS = {
    "text": dict(d_model=96, n_layers=3, n_heads=4, max_len=D.DEFAULT_SEQ_LEN["text"], dropout=0.0),
    "dna": dict(d_model=96, n_layers=3, n_heads=4, max_len=D.DEFAULT_SEQ_LEN["dna"], dropout=0.0),
    "protein": dict(d_model=64, n_layers=3, n_heads=4, max_len=D.PROTEIN_MAX_LEN, dropout=0.1),
}
#: training recipe per data set (steps chosen to stay under ~6 minutes of one CPU thread)
TRAIN_CONFIGS = {
    "text": dict(steps=1600, batch_size=32, lr=2e-3, warmup=100, schedule="cosine", ema_decay=0.995, weight_decay=0.0),
    "dna": dict(steps=1600, batch_size=32, lr=2e-3, warmup=100, schedule="cosine", ema_decay=0.995, weight_decay=0.0),
    "protein": dict(steps=1200, batch_size=16, lr=1e-3, warmup=100, schedule="cosine", ema_decay=0.995, weight_decay=0.0),
}


class CausalBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Tensor) -> Tensor:
        B, N, C = h.shape
        q, k, v = self.qkv(self.ln1(h)).view(B, N, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + self.drop(self.proj(a.transpose(1, 2).reshape(B, N, C)))
        return h + self.drop(self.mlp(self.ln2(h)))


class CausalLM(nn.Module):
    """Causal transformer over ``vocab_size`` tokens plus a BOS token (id ``vocab_size``).

    ``forward(tokens [B, N]) -> logits [B, N, vocab_size]``: ``logits[:, i]`` predicts token
    ``i`` from BOS and tokens ``< i``. ``N <= max_len``."""

    def __init__(self, vocab_size: int, d_model: int = 96, n_layers: int = 3, n_heads: int = 4, max_len: int = 128,
                 dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be a multiple of n_heads ({n_heads})")
        self.config = dict(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads, max_len=max_len,
                           dropout=dropout)
        self.vocab_size, self.max_len = vocab_size, max_len
        self.tok = nn.Embedding(vocab_size + 1, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.blocks = nn.ModuleList([CausalBlock(d_model, n_heads, dropout) for _ in range(n_layers)])
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)
        self.drop = nn.Dropout(dropout)
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, tokens: Tensor) -> Tensor:
        B, N = tokens.shape
        if N > self.max_len:
            raise ValueError(f"sequences of {N} tokens are longer than this reference model's max_len {self.max_len}")
        inp = torch.cat([torch.full((B, 1), self.vocab_size, dtype=torch.long, device=tokens.device), tokens[:, :-1]], 1)
        h = self.drop(self.tok(inp) + self.pos(torch.arange(N, device=tokens.device))[None])
        for blk in self.blocks:
            h = blk(h)
        return self.head(self.ln(h))

    def token_nll(self, tokens: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """Per-token negative log-likelihood (nats) ``[B, N]``, zero at padding. Padding must come
        after the real tokens (the model reads left to right)."""
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise ValueError(f"token ids must lie in 0..{self.vocab_size - 1}; got {int(tokens.min())}..{int(tokens.max())}")
        logits = self(tokens)
        nll = F.cross_entropy(logits.transpose(1, 2), tokens, reduction="none")
        return nll if mask is None else nll * mask.to(nll.dtype)


class NextTokenLoss:
    """Objective for :func:`workbench.training.train`: per-sample mean next-token NLL (nats per
    real token) ``[B]`` of ``nets["model"]`` (a :class:`CausalLM`) on ``batch.x`` ``[B, N]``."""

    def __call__(self, nets, batch: Batch, generator=None) -> Tensor:
        mask = torch.ones(batch.x.shape) if batch.mask is None else batch.mask
        nll = nets["model"].token_nll(batch.x, mask)
        return nll.sum(1) / mask.sum(1).clamp_min(1)


@torch.no_grad()
def perplexity(lm: CausalLM, tokens: Tensor, mask: Optional[Tensor] = None, batch_size: int = 256) -> float:
    """``exp`` of the mean NLL per real token of ``tokens`` ``[B, N]`` (``mask`` ``[B, N]``)."""
    lm.eval()
    mask = torch.ones(tokens.shape) if mask is None else torch.as_tensor(mask).float()
    tot, cnt = 0.0, 0.0
    for i in range(0, tokens.shape[0], batch_size):
        nll = lm.token_nll(tokens[i:i + batch_size], mask[i:i + batch_size])
        tot += float(nll.double().sum())
        cnt += float(mask[i:i + batch_size].double().sum())
    if cnt == 0:
        raise ValueError("no real tokens to score (the mask is all zero)")
    return math.exp(tot / cnt)


def unigram_perplexity(dataset: str, tokens: Tensor, mask: Optional[Tensor] = None) -> float:
    """Perplexity of ``tokens`` under the train split's unigram (token frequency) model, the
    baseline a reference model must beat."""
    p = D.unigram_probs(dataset, "train").clamp_min(1e-12)
    mask = torch.ones(tokens.shape) if mask is None else torch.as_tensor(mask).double()
    nll = -(p.log()[tokens] * mask).sum() / mask.sum()
    return float(torch.exp(nll))


def checkpoint_path(dataset: str) -> Path:
    return CHECKPOINT_DIR / f"{D.check_dataset(dataset)}_ar.safetensors"


def load_reference_lm(dataset: str, path: Optional[str] = None) -> CausalLM:
    """The shipped (or ``path``) reference model of ``dataset`` in eval mode, loaded with the
    project's safe loader; a :class:`CheckpointError` if it is missing or for another data set."""
    path = Path(path) if path is not None else checkpoint_path(dataset)
    state, meta = load_weights(path)
    if meta.get("dataset") != dataset or "model_config" not in meta:
        raise CheckpointError(f"{path} is not a {dataset} reference model (its header names dataset {meta.get('dataset')!r})")
    lm = CausalLM(**meta["model_config"])
    load_state_into(lm, state, path)
    lm.meta = meta
    return lm.eval()


def train_reference_lm(dataset: str, out_dir, *, steps: Optional[int] = None, progress: bool = True, seed: int = 0,
                       export: Optional[Path] = None) -> dict:
    """Train (or resume, from ``out_dir/state.pt``) the reference model of ``dataset`` with the
    shared loop, measure test perplexity against the unigram baseline and write the EMA weights
    to ``export`` (default: the shipped checkpoint path). Returns the record stored in its header."""
    from workbench.training import TrainConfig, train

    torch.manual_seed(seed)
    vs = D.vocab_size(dataset)
    model_cfg = dict(vocab_size=vs, **LM_CONFIGS[dataset])
    tcfg = dict(TRAIN_CONFIGS[dataset])
    if steps is not None:
        tcfg["steps"] = steps
    cfg = TrainConfig(**tcfg, seed=seed, progress=progress, ckpt_every=500, ckpt_minutes=1.0)
    lm = CausalLM(**model_cfg)
    settings = {"dataset": dataset, "model_config": model_cfg, "train": tcfg, "seed": seed}
    t0 = time.time()
    # the run's identity for resume: everything but the step count (a rerun may extend a run)
    identity = {**settings, "train": {k: v for k, v in tcfg.items() if k != "steps"}}
    res = train(NextTokenLoss(), {"model": lm}, D.batch_sampler(dataset, "train"), cfg, out_dir=out_dir, meta=settings,
                settings=identity)
    ema = res.ema["model"].eval()
    test = D.reference_batch(dataset, "test")
    record = {
        **settings,
        "params": sum(p.numel() for p in lm.parameters()),
        "steps": res.step,
        "train_seconds_this_invocation": round(time.time() - t0, 1),
        "train_seconds_loop": round(float(res.seconds), 1),
        "test_sequences": int(test.x.shape[0]),
        "test_perplexity": round(perplexity(ema, test.x, test.mask), 4),
        "test_unigram_perplexity": round(unigram_perplexity(dataset, test.x, test.mask), 4),
        "torch_threads": torch.get_num_threads(),
    }
    save_weights(export or checkpoint_path(dataset), ema, record)
    return record


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="train a sequences reference LM (resumable) and export it")
    ap.add_argument("--dataset", required=True, choices=D.DATASETS)
    ap.add_argument("--out", default=None, help="training folder (state.pt for resume); default runs/sequences_ar/<dataset>")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--export", default=None, help="where the weights go; default the shipped checkpoint path")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = a.out or f"runs/sequences_ar/{a.dataset}"
    rec = train_reference_lm(a.dataset, out, steps=a.steps, progress=not a.no_progress,
                             export=Path(a.export) if a.export else None)
    print(rec)


if __name__ == "__main__":
    main()
