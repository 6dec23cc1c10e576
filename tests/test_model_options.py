"""Model options are checked before any training: one line and exit 2, never a report of failed runs."""

import pytest

from bench import frontend
from bench.cli import _options, main


@pytest.mark.parametrize(("options", "needle"), [
    (["--model-options", "widht=0.5"], "unknown option 'widht' for model 'fcn' (did you mean width?); accepted: "
     "depth, width"),
    (["--model-options", "width=0.5"], "bad option width=0.5 for model 'fcn'; accepted: an integer"),
    (["--model-options", "width=0"], "fcn needs depth >= 1 and width >= 1"),
    (["--model", "resnet20", "--model-options", "depth=3"], "unknown option 'depth' for model 'resnet20'"),
    # vit passes its options on to timm's VisionTransformer: its keywords are the accepted ones.
    (["--model", "vit", "--model-options", "qkv_biass=false"], "(did you mean qkv_bias?)"),
    (["--model", "vit", "--model-options", "global_pool=best"], "bad option global_pool='best' for model 'vit'"),
    # Only the data set's 8×8 input shape rules this one out: caught by the build on the meta device.
    (["--model", "vit", "--model-options", "patch_size=3"], "patch_size that divides the image size 8x8"),
    (["--model", "timm:resnet18", "--model-options", "foo=1"], "unexpected keyword argument 'foo'"),
])
def test_bad_model_option_is_one_line_and_exit_2_before_any_training(options, needle, tmp_path, capsys):
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    code = main(["run", "--preset", "quick", "--out", str(out), "--cache-dir", str(ckpt), "--no-progress", *options])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and needle in err, err
    assert not (out / "results.jsonl").exists() and not ckpt.exists()  # nothing trained, nothing recorded


def test_another_model_starts_from_its_own_defaults_not_the_presets_options():
    notes = []
    preset = frontend.resolve_preset("quick", flags=frontend.CLI_FLAGS, changes={"model": "resnet20"},
                                     note=notes.append)
    assert preset.model == "resnet20" and preset.model_options == {}
    assert len(notes) == 1 and "depth=4,width=128" in notes[0] and "own defaults" in notes[0]
    notes.clear()
    preset = frontend.resolve_preset("quick", flags=frontend.CLI_FLAGS, changes={"model": "vit"},
                                     model_options={"depth": 1}, note=notes.append)
    assert preset.model_options == {"depth": 1} and notes == []  # not the FCN's width
    vit = frontend.resolve_preset("quick", flags=frontend.CLI_FLAGS, changes={"model": "vit"},
                                  model_options=_options("fc_norm=none,qkv_bias=false,depth=1"))
    assert vit.model_options == {"fc_norm": None, "qkv_bias": False, "depth": 1}
    same = frontend.resolve_preset("quick", flags=frontend.CLI_FLAGS, changes={"model": "fcn"},
                                   model_options={"width": 32}, note=notes.append)
    assert same.model_options == {"depth": 4, "width": 32} and notes == []  # same model: merged


def test_quick_with_another_model_says_so_and_trains_it(tmp_path, capsys):
    code = main(["run", "--preset", "quick", "--model", "vit", "--out", str(tmp_path), "--no-progress",
                 "--cache-dir", str(tmp_path / "ckpt"), "--methods", "lorita-n1", "--epochs", "2",
                 "--finetune-epochs", "1", "--targets", "params:0.5", "--latency-rounds", "2",
                 "--throughput-batch", "8"])
    assert code == 0
    err = capsys.readouterr().err
    assert "note: preset 'quick' sets model options depth=4,width=128 for fcn" in err
    assert "unexpected keyword" not in (tmp_path / "results.jsonl").read_text()
