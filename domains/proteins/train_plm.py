"""Train the small protein language model (:class:`domains.proteins.plm.ProteinLM`) and export
it as safetensors.

    python -m domains.proteins.train_plm --out domains/proteins/checkpoints/plm.safetensors --steps 1200

Data: :func:`domains.proteins.plm.protein_sequences` (real proteins shipped in the installed
``pyhmmer`` package; hash split train/val by sequence). Each training example is a random
contiguous crop of ``--crop`` residues of a random training sequence; the objective is the
masked-LM loss (:class:`~domains.proteins.plm.MaskedLMLoss`, 15% of positions, 80/10/10) and the
loop is the shared :func:`workbench.training.train` (AdamW, warm-up + cosine LR, EMA). The EMA
weights are exported with their architecture and the held-out evaluation (masked-token accuracy
and perplexity of the model and of the unigram baseline) in the file's metadata, and printed.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from workbench.checkpoint import save_weights
from workbench.losses import Batch
from workbench.training import TrainConfig, train

from .chain import tokenize
from .plm import PAD_TOKEN, MaskedLMLoss, ProteinLM, evaluate_masked_lm, protein_sequences, unigram_frequencies


class CropSequenceSampler:
    """``(batch_size, generator) -> Batch(x=tokens long [B, crop], mask float [B, crop])``: random
    training sequences (uniform), each a random contiguous crop of at most ``crop`` residues,
    right-padded with ``<pad>``. A pure function of the generator."""

    def __init__(self, sequences: list[str], crop: int = 128):
        if not sequences:
            raise ValueError("CropSequenceSampler needs at least one sequence")
        self.tokens = [torch.as_tensor(tokenize(s)) for s in sequences]
        self.lengths = torch.tensor([len(t) for t in self.tokens])
        self.crop = int(crop)

    def __call__(self, batch_size: int, generator: torch.Generator) -> Batch:
        idx = torch.randint(0, len(self.tokens), (batch_size,), generator=generator)
        u = torch.rand(batch_size, generator=generator)
        x = torch.full((batch_size, self.crop), PAD_TOKEN, dtype=torch.long)
        mask = torch.zeros(batch_size, self.crop)
        for b, (i, ub) in enumerate(zip(idx.tolist(), u.tolist())):
            t = self.tokens[i]
            n = min(len(t), self.crop)
            start = int(ub * (len(t) - n + 1))
            x[b, :n] = t[start:start + n]
            mask[b, :n] = 1.0
        return Batch(x=x, mask=mask)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="domains/proteins/checkpoints/plm.safetensors", help="output .safetensors file")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema-decay", type=float, default=0.995)
    p.add_argument("--dim", type=int, default=96)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work-dir", default=None, help="resumable training state directory (default: none, in memory)")
    p.add_argument("--progress", action="store_true")
    a = p.parse_args(argv)
    if not str(a.out).endswith(".safetensors"):
        raise SystemExit(f"--out must end with .safetensors, got {a.out}")
    torch.set_num_threads(a.threads)

    train_seqs = [s for _, s in protein_sequences("train")]
    val_seqs = [s for _, s in protein_sequences("val")]
    print(f"data: {len(train_seqs)} train sequences ({sum(map(len, train_seqs))} residues), "
          f"{len(val_seqs)} val sequences ({sum(map(len, val_seqs))} residues)", flush=True)
    torch.manual_seed(a.seed)
    model = ProteinLM(dim=a.dim, depth=a.depth, heads=a.heads)
    cfg = TrainConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, weight_decay=0.01, warmup=a.warmup, schedule="cosine",
                      grad_clip=1.0, ema_decay=a.ema_decay, ckpt_every=max(a.steps // 4, 1), log_every=50, seed=a.seed,
                      progress=a.progress)
    t0 = time.time()
    res = train(MaskedLMLoss(), {"model": model}, CropSequenceSampler(train_seqs, crop=a.crop), cfg, out_dir=a.work_dir,
                meta={"config": model.config})
    seconds = time.time() - t0
    freqs = unigram_frequencies(train_seqs)
    ev = {"model": evaluate_masked_lm(res.ema["model"], val_seqs), "raw": evaluate_masked_lm(res.nets["model"], val_seqs),
          "unigram": evaluate_masked_lm(None, val_seqs, frequencies=freqs)}
    report = {
        "config": model.config, "steps": res.step, "train_seconds": round(seconds, 1), "threads": a.threads,
        "batch_size": a.batch_size, "crop": a.crop, "lr": a.lr, "ema_decay": a.ema_decay, "seed": a.seed,
        "n_params": sum(p.numel() for p in model.parameters()),
        "data": {"source": "pyhmmer package test data: data/seqs/938293.PRJEB85.HG003687.faa", "n_train": len(train_seqs),
                 "n_val": len(val_seqs)},
        "final_train_loss": res.history[-1].get("main") if res.history else None,
        "val": {k: {kk: (round(vv, 4) if isinstance(vv, float) else vv) for kk, vv in v.items()} for k, v in ev.items()},
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    save_weights(a.out, res.ema["model"], {"config": model.config, "report": report, "unigram_frequencies": np.round(freqs, 6).tolist()})
    print(json.dumps(report, indent=1), flush=True)
    return report


if __name__ == "__main__":
    main()
