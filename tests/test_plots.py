"""relational_rnn.plots as a script (python -m relational_rnn.plots): the learning curves of several runs on one figure."""
import json
import os

import pytest

from relational_rnn import plots


def write_run(folder, kinds, num_objects=3):
    """A run folder as training writes it: run_config.json and <kind>/metrics.jsonl."""
    os.makedirs(folder)
    with open(os.path.join(folder, "run_config.json"), "w", encoding="utf-8") as fh:
        json.dump({"num_objects": num_objects}, fh)
    for kind in kinds:
        os.makedirs(os.path.join(folder, kind))
        with open(os.path.join(folder, kind, "metrics.jsonl"), "w", encoding="utf-8") as fh:
            for step in (0, 10, 20):
                fh.write(json.dumps({"event": "eval", "step": step, "wall_time": 0.5 * step,
                                     "heldout_acc": 0.3 + 0.01 * step, "heldout_loss": 1.2,
                                     "train_loss": 1.1,
                                     "acc_per_n": [1.0, 0.2, 0.1][:num_objects]}) + "\n")


def test_runs_and_model_folders_are_overlaid_with_their_labels(tmp_path, monkeypatch, capsys):
    write_run(tmp_path / "a", ["rmc", "lstm"])
    write_run(tmp_path / "b", ["rmc"])
    drawn = {}
    real = plots.plot_learning_curves

    def spy(metrics, path, **kwargs):
        drawn.update(metrics=metrics, **kwargs)
        return real(metrics, path, **kwargs)

    monkeypatch.setattr(plots, "plot_learning_curves", spy)
    out = tmp_path / "compare.png"
    assert plots.main([str(tmp_path / "a"), str(tmp_path / "b" / "rmc"), "--out", str(out),
                       "--title", "two runs"]) == 0
    assert out.stat().st_size > 0 and "3 models" in capsys.readouterr().out
    assert list(drawn["metrics"]) == ["a/lstm", "a/rmc", "b/rmc"]
    assert [e["step"] for e in drawn["metrics"]["b/rmc"]] == [0, 10, 20]
    assert drawn["chance"] == pytest.approx(1 / 3) and drawn["title"] == "two runs"
    assert plots.main([str(tmp_path / "a" / "rmc"), str(tmp_path / "b"), "--out", str(out),
                       "--label", "2 heads", "--label", "4 heads",
                       "--level", "0.25=plateau (n = 0 solved)"]) == 0
    assert list(drawn["metrics"]) == ["2 heads", "4 heads"]
    assert drawn["levels"] == {"plateau (n = 0 solved)": 0.25}


def test_runs_of_different_tasks_get_no_chance_line(tmp_path, monkeypatch):
    write_run(tmp_path / "a", ["rmc"], num_objects=3)
    write_run(tmp_path / "b", ["rmc"], num_objects=2)
    drawn = {}
    monkeypatch.setattr(plots, "plot_learning_curves",
                        lambda metrics, path, **kwargs: drawn.update(kwargs) or str(path))
    assert plots.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out",
                       str(tmp_path / "x.png")]) == 0
    assert drawn["chance"] is None


@pytest.mark.parametrize("argv, message", [
    (["missing"], "missing: no such folder"),
    (["empty"], "neither a model folder"),
    (["a", "--label", "one"], "--label: 1 given for 2 models"),
    (["a", "--label", "x", "--label", "x"], "the labels must differ"),
])
def test_bad_arguments_are_refused_and_nothing_is_written(tmp_path, capsys, argv, message):
    write_run(tmp_path / "a", ["rmc", "lstm"])
    os.makedirs(tmp_path / "empty")
    out = tmp_path / "x.png"
    argv = [str(tmp_path / a) if a in ("a", "missing", "empty") else a for a in argv]
    assert plots.main([*argv, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("level", ["1.5=too high", "0.25", "x=label", "0.2="])
def test_bad_levels_are_refused_by_the_parser(tmp_path, capsys, level):
    write_run(tmp_path / "a", ["rmc"])
    out = tmp_path / "x.png"
    with pytest.raises(SystemExit) as exc:
        plots.main([str(tmp_path / "a"), "--level", level, "--out", str(out)])
    assert exc.value.code == 2
    assert "expected ACC=TEXT with ACC in [0, 1]" in capsys.readouterr().err
    assert not out.exists()
