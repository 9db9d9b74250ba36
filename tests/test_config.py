"""RunConfig: the typed run config gives every committed record's config, key and place back
unchanged, keeps the paper-2core campaign's keys, groups and state files, and refuses bad
values with one line naming them and what is accepted."""
from __future__ import annotations

import json
import pickle
import subprocess
from pathlib import Path

import pytest

from marnn import campaign, grid, paths, store
from marnn.config import CONFIG_FIELDS, RunConfig, config_key
from marnn.registry import UnknownNameError
from marnn.scales import get_scale
from marnn.train import formal_config, ptb_config, resume, scale_from_config


def _committed_records() -> list[Path]:
    try:
        out = subprocess.run(["git", "-C", str(paths.REPO), "ls-files", "-z", "--", "results/formal", "results/ptb"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the committed records cannot be listed")
    files = [paths.REPO / f for f in out.split("\0") if f.endswith(".json")]
    if not files:
        pytest.skip("this checkout has no committed records")
    return files


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x


def test_every_committed_config_round_trips():
    files = _committed_records()
    assert len(files) >= 700
    scales = set()
    for path in files:
        rec = json.loads(path.read_text())
        c = RunConfig.from_dict(rec["config"])
        d = c.to_dict()
        assert d == rec["config"] and list(d) == list(rec["config"]), path
        assert store.canonical(d) == store.canonical(rec["config"])
        assert c.key == rec["key"] == store.config_key(rec["config"]), path
        assert c.path(paths.RESULTS) == path == store.record_path(rec["config"], paths.RESULTS)
        assert c.group_key == grid.group_key(rec["config"])
        fields = rec["config"]["scale_fields"]
        assert c.scale == get_scale(c.scale_name).with_(**{k: _tuplify(v) for k, v in fields.items()})
        assert RunConfig.from_dict(d) == c and hash(RunConfig.from_dict(d)) == hash(c)
        scales.add((c.kind, c.scale_name))
    assert {("formal", "smoke"), ("formal", "quick"), ("ptb", "smoke"), ("ptb", "quick")} <= scales


def _campaign_configs() -> list[dict]:
    return [c for n in (1, 2, 3, 4) for c in campaign.runs(n)] + grid.ptb_search("paper-2core")


def test_the_campaign_keeps_its_keys_groups_and_state_files():
    configs = _campaign_configs()
    assert len(configs) > 500
    for c in configs:
        rc = RunConfig.from_dict(c)
        assert rc.to_dict() == c and list(rc.to_dict()) == list(c)
        assert rc.key == store.config_key(c) and rc.group_key == grid.group_key(c)
        assert rc.path("/r") == store.record_path(c, "/r")
        assert rc.scale == scale_from_config(c)
    groups = grid.group_configs(configs)
    rebuilt = [[RunConfig.from_dict(c).to_dict() for c in g] for g in groups]
    assert [resume.state_path(g, "F").name for g in rebuilt] == [resume.state_path(g, "F").name for g in groups]
    search = grid.group_configs(grid.ptb_search("paper-2core"))  # pinned in tests/test_records.py too
    assert [resume.state_path([RunConfig.from_dict(c).to_dict() for c in g], "F").name
            for g in search] == ["ptb-90f847a9895b9322.pt"]
    assert RunConfig.formal("count-3", "jm-10", "c", 0, "paper-2core").key == "2f3adddd5a8b89e2"


def test_constructors_equal_todays_builders():
    sc = get_scale("paper-2core")
    for task, model, freeze, seed, data_seed in (("count-3", "jm-10", "m", 3, 0),
                                                 ("marked-copy", "rns-3-3", "cm", 1, 2)):
        rc = RunConfig.formal(task, model, freeze, seed, sc, data_seed)
        d = formal_config(task, model, freeze, seed, sc, data_seed)
        assert rc.to_dict() == d and rc.key == config_key(d) and rc.corpus == task and rc.is_formal
        assert rc.scale == get_scale("paper-2core").with_(**d["scale_fields"])
    rc = RunConfig.ptb("rns-4-5", "m", 0, sc)
    assert rc.to_dict() == ptb_config("rns-4-5", "m", 0, sc) and rc.embedding_group == "controller"
    assert rc.corpus == "ptb" and not rc.is_formal and rc.scale.ptb_max_epochs == 3
    assert RunConfig.from_dict(rc) is rc


def test_a_run_config_is_frozen():
    rc = RunConfig.formal("count-3", "lstm", "none", 0, "smoke")
    with pytest.raises(AttributeError):
        rc.seed = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        rc.scale_fields["max_epochs"] = 5  # type: ignore[index]
    d = rc.to_dict()
    d["scale_fields"]["max_epochs"] = 5  # a copy: the config itself does not change
    assert rc.scale_fields["max_epochs"] == get_scale("smoke").max_epochs
    assert pickle.loads(pickle.dumps(rc)) == rc  # dask ships them


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("make, bad, accepted", [
    (lambda: RunConfig.formal("no-such-task", "lstm", "none", 0, "smoke"), "'no-such-task'", "marked-copy"),
    (lambda: RunConfig.formal("count-3", "lstm-256", "none", 0, "smoke"), "'lstm-256'", "jm-10"),
    (lambda: RunConfig.formal("count-3", "lstm", "x", 0, "smoke"), "'x'", "none, m, c, cm"),
    (lambda: RunConfig.formal("count-3", "lstm", "m", 0, "huge"), "'huge'", "paper-2core"),
    (lambda: RunConfig.ptb("jm-10", "m", 0, "smoke"), "'jm-10'", "lstm-256"),
    (lambda: RunConfig.ptb("lstm-256", "m", 0, "smoke", "nowhere"), "'nowhere'", "controller, memory, trained"),
    (lambda: RunConfig.ptb("lstm-256", "m", -1, "smoke"), "-1", "[0, 4294967295]"),
])
def test_bad_values_give_one_line(make, bad, accepted):
    with pytest.raises(ValueError) as err:
        make()
    text = _one_line(err)
    assert bad in text and accepted in text


def test_from_dict_checks_the_fields():
    good = RunConfig.ptb("lstm-256", "m", 0, "smoke").to_dict()
    cases = [
        ({**good, "kind": "speech"}, UnknownNameError, "'speech'"),
        ({k: v for k, v in good.items() if k != "embedding_group"}, ValueError, "'embedding_group'"),
        ({**good, "task": "count-3"}, ValueError, "'task'"),
        ({**good, "seed": "0"}, ValueError, "'0'"),
        ({**good, "seed": True}, ValueError, "True"),
        ({**good, "model": "lstm"}, UnknownNameError, "'lstm'"),
        ({**good, "scale_fields": {**good["scale_fields"], "max_epochs": 3}}, UnknownNameError, "'max_epochs'"),
        ([good], ValueError, "accepted"),
    ]
    for d, err_type, bad in cases:
        with pytest.raises(err_type) as err:
            RunConfig.from_dict(d)  # type: ignore[arg-type]
        assert bad in _one_line(err)
    assert set(CONFIG_FIELDS) == {"formal", "ptb"}


def test_the_store_refuses_a_record_whose_config_is_not_a_run(tmp_path):
    cfg = RunConfig.formal("count-3", "lstm", "none", 0, "smoke").to_dict()
    rec = {"config": {**cfg, "model": "lstm-9000"}}
    rec["key"] = config_key(rec["config"])
    why = store.problems(rec) or ""
    assert why.startswith("config: unknown model 'lstm-9000'") and "\n" not in why


def test_a_trainer_refuses_runs_that_cannot_share_a_model():
    from marnn.train.loop import check_group

    a = RunConfig.formal("count-3", "lstm", "none", 0, "smoke").to_dict()
    b = RunConfig.formal("count-3", "lstm", "m", 1, "smoke").to_dict()
    assert check_group([a, b], "formal") == [RunConfig.from_dict(a), RunConfig.from_dict(b)]  # mode and seed may differ
    other = RunConfig.formal("marked-copy", "lstm", "none", 0, "smoke").to_dict()
    with pytest.raises(ValueError, match="must share 'task'"):
        check_group([a, other], "formal")
    with pytest.raises(ValueError, match="must share 'data_seed'"):
        check_group([a, {**b, "data_seed": 1}], "formal")
    with pytest.raises(ValueError, match="a ptb group got a formal run"):
        check_group([a], "ptb")
    with pytest.raises(UnknownNameError, match="'lstm-9000'"):
        check_group([a, {**b, "model": "lstm-9000"}], "formal")
