"""The ``workbench designability`` plugin command: argument parsing, dispatch through the
``workbench.commands`` entry point, one-line errors."""
import pytest

from domains.proteins.cli import DesignabilityOptions, parse_args
from workbench.cli import main, plugin_commands


def test_designability_is_a_plugin_command():
    assert "designability" in plugin_commands()


def test_parse_args_splits_paths_and_typed_options():
    inputs, o = parse_args(["runs/x", "a.pdb", "runs/*.cif", "n_seq=4", "temperature=0.2", "resume=false", "out=/tmp/d"])
    assert inputs == ["runs/x", "a.pdb", "runs/*.cif"]
    assert o["n_seq"] == 4 and o["temperature"] == 0.2 and o["resume"] is False and o["out"] == "/tmp/d"
    assert o["folder"] == DesignabilityOptions.folder  # untouched options keep their defaults
    inputs, _ = parse_args(["--", "weird=name.pdb"])
    assert inputs == ["weird=name.pdb"]
    # the core commands' grammar: null, quoted strings, yes/no booleans
    _, o = parse_args(["x.pdb", "fold_steps=null", "reference='natives'", "all_chains=yes"])
    assert o["fold_steps"] is None and o["reference"] == "natives" and o["all_chains"] is True


@pytest.mark.parametrize("argv,msg", [(["x.pdb", "nope=1"], "unknown designability option 'nope'; valid: out, n_seq"),
                                      (["x.pdb", "resume=maybe"], "expected true or false"),
                                      (["n_seq=2"], "needs input backbones"),
                                      (["x.pdb", "n_seq=two"], "option n_seq='two'")])
def test_bad_arguments_are_one_line_errors(argv, msg):
    with pytest.raises(ValueError, match=msg):
        parse_args(argv)


def test_cli_exit_code_and_message(capsys):
    assert main(["designability", "x.pdb", "nope=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown designability option 'nope'" in err
    assert main(["designability", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("workbench designability DIR_OR_FILES... [key=value ...]: ")
    assert "\n  n_seq=8  # sequences designed per backbone" in out and "\n  fold_steps=None  # " in out
    assert main(["designability", "x.pdb", "n_seq=2", "--help"]) == 0  # the current values, nothing runs
    assert "\n  n_seq=2  # " in capsys.readouterr().out
