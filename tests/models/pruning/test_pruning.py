from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vistream.models.backbones import create_model
from vistream.models.flops import count_flops, count_params
from vistream.models.pruning.abc import ABCConfig, ABCPruner, fit_budget
from vistream.models.pruning.baselines import METHODS, baseline_widths
from vistream.models.pruning.surgery import FlopsTable, base_widths, genes_to_widths, prune


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return create_model("resnet20", num_classes=10, widths=[8, 8, 8, 16, 16, 16, 32, 32, 32],
                        base=8).eval()


@pytest.mark.parametrize("arch", ["resnet20", "vgg16", "resnet18"])
def test_surgery_is_physical_and_inherits(arch):
    torch.manual_seed(0)
    kw = {"widths": [16] * 13} if arch == "vgg16" else {"base": 8}
    m = create_model(arch, num_classes=10, **kw).eval()
    full = prune(m, base_widths(m))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(m(x), full(x), atol=1e-5)
    w = [max(1, c // 2) for c in base_widths(m)]
    p = prune(m, w)
    assert p.config["widths"] == w and count_params(p) < count_params(m)
    assert FlopsTable(m)(w) == count_flops(p)
    assert p(x).shape == (2, 10)


def test_pruned_artifact_matches_manifest(net, tmp_path):
    from vistream.models.artifacts import export_artifact, load_artifact

    w = [3, 5, 2, 7, 9, 4, 11, 20, 5]
    p = prune(net, w)
    man = export_artifact(p, tmp_path / "p.vsa", method="abc", onnx=False)
    back = load_artifact(tmp_path / "p.vsa")
    assert man["config"]["widths"] == w and man["params"] == count_params(back)
    assert man["flops"] == count_flops(back)
    for k, v in back.state_dict().items():
        assert list(v.shape) == man["param_shapes"][k]
    assert back.blocks[0].conv1.out_channels == 3


@pytest.mark.parametrize("method", METHODS)
def test_baselines_meet_the_budget(net, method):
    t = FlopsTable(net)
    w = baseline_widths(method, net, 0.5, seed=1, table=t)
    assert 0.4 <= t.ratio(w) <= 0.5


def test_fit_budget_and_genes():
    m = create_model("resnet20", num_classes=10)
    t = FlopsTable(m)
    g = fit_budget(np.full(9, 9), t, 0.5, 9, np.random.default_rng(0))
    assert t.ratio(genes_to_widths(g, t.base)) <= 0.5
    assert genes_to_widths([1, 9], [16, 64]) == [1, 57]


def test_abc_search_logs_resumes_and_plots(net, tmp_path):
    calls = []

    def fitness(widths):  # cheap, deterministic stand-in for "train 1 epoch + val accuracy"
        calls.append(widths)
        return float(np.dot(widths, np.arange(len(widths)))) / 1000, 0.5

    cfg = ABCConfig(food_number=3, max_cycle=2, limit=1, flops_target=0.5, seed=3)
    r = ABCPruner(net, None, cfg, tmp_path, progress=False, fitness_fn=fitness).search()
    lines = (tmp_path / "evaluations.jsonl").read_text().splitlines()
    assert len(lines) == len(r.evaluations) >= 3 * 5
    assert (tmp_path / "convergence.png").exists()
    assert json.loads((tmp_path / "search.json").read_text())["best_fitness"] == r.best_fitness
    assert r.best_fitness == max(e.fitness for e in r.evaluations)
    assert r.best_flops_ratio <= 0.5 and r.search_epochs == 0.5 * len(calls)
    # interrupted after 7 evaluations: the resumed search replays them and finishes the same
    (tmp_path / "evaluations.jsonl").write_text("\n".join(lines[:7]) + "\n{broken")
    n_before = len(calls)
    r2 = ABCPruner(net, None, cfg, tmp_path, progress=False, fitness_fn=fitness).search(resume=True)
    assert r2.best_genes == r.best_genes and len(r2.evaluations) == len(r.evaluations)
    assert len(calls) - n_before < len(calls[:n_before])


@pytest.mark.parametrize("metric", ["accuracy", "loss"])
def test_abc_with_real_training_fitness(metric):
    from vistream.models.data import DataBundle, Split
    from vistream.models.train import evaluate_loss

    torch.manual_seed(0)
    tiny = create_model("resnet20", num_classes=10, widths=[4] * 9, base=4).eval()
    rng = np.random.default_rng(0)
    s = Split(rng.random((16, 3, 16, 16)).astype(np.float32), np.arange(16) % 10)
    data = DataBundle("tiny", s, s, s, 10)
    cfg = ABCConfig(food_number=2, max_cycle=1, limit=1, fitness_subset=8, batch_size=8,
                    bn_batches=1, fitness_metric=metric)
    r = ABCPruner(tiny, data, cfg, progress=False, input_size=(16, 16)).search()
    assert 0 < r.best_fitness <= 1 and r.search_epochs > 0
    if metric == "loss":  # 1 / (1 + CE): below 1 for any candidate that is not perfect
        assert all(0 < e.fitness < 1 for e in r.evaluations)
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (data.mean, data.std))
        with torch.no_grad():
            logits = tiny((torch.from_numpy(s.x) - mean) / std)
        want = torch.nn.functional.cross_entropy(logits, torch.as_tensor(s.y)).item()
        assert evaluate_loss(tiny, s, data.mean, data.std) == pytest.approx(want, rel=1e-5)


def test_align_width_rounds_to_the_simd_grid():
    from vistream.models.pruning.surgery import align_width

    assert [align_width(w, 16, 8) for w in (1, 3, 9, 12, 13, 16)] == [8, 8, 8, 16, 16, 16]
    assert align_width(57, 64, 8) == 56 and align_width(63, 64, 8) == 64
    assert align_width(7, 4, 8) == 4  # never wider than the layer
    assert align_width(0, 16, 1) == 1 and align_width(9, 16, 1) == 9
    assert genes_to_widths([1, 9], [16, 64], multiple=8) == [8, 56]


@pytest.mark.parametrize("method", METHODS)
def test_aligned_baselines_meet_the_budget_on_the_grid(method):
    m = create_model("resnet56", num_classes=10)
    t = FlopsTable(m)
    w = baseline_widths(method, m, 0.5, seed=1, table=t, multiple=8)
    assert all(v % 8 == 0 for v in w), w
    assert 0.35 <= t.ratio(w) <= 0.5


def test_aligned_abc_search_only_proposes_aligned_widths(tmp_path):
    m = create_model("resnet56", num_classes=10)
    cfg = ABCConfig(food_number=3, max_cycle=1, limit=1, flops_target=0.5, seed=2, channel_multiple=8)
    seen = []

    def fitness(widths):
        seen.append(widths)
        return float(sum(widths)) / 1000, 0.0

    res = ABCPruner(m, None, cfg, progress=False, fitness_fn=fitness).search()
    assert seen and all(v % 8 == 0 for w in seen for v in w)
    assert res.best_flops_ratio <= 0.5 and all(v % 8 == 0 for v in res.best_widths)


def _tiny_bundle():
    from vistream.models.data import DataBundle, Split

    rng = np.random.default_rng(0)
    s = Split(rng.random((32, 3, 16, 16)).astype(np.float32), np.arange(32) % 10)
    return DataBundle("tiny", s, s, s, 10)


def test_evaluate_pruning_in_workers_caches_and_refuses_other_settings(tmp_path):
    from vistream.models.pruning import evaluate_pruning

    torch.manual_seed(0)
    tiny = create_model("resnet20", num_classes=10, widths=[16] * 9, base=8).eval()
    # 0.55: with 16-channel blocks aligned to 8 the smallest structure keeps 0.512 of the FLOPs
    data = _tiny_bundle()
    kw = dict(methods=("uniform", "l1"), seeds=(0, 1), out=tmp_path, progress=False,
              echo=lambda _: None, latency_batch=2)
    res = evaluate_pruning(tiny, data, 0.55, finetune_epochs=1, jobs=2, **kw)
    rows = {r["method"]: r for r in res["rows"]}
    assert set(rows) == {"unpruned", "uniform", "l1"}
    assert rows["l1"]["n"] == 2 and rows["l1"]["flops_ratio"] < 0.6  # inner widths all 8
    recs = [json.loads(p.read_text()) for p in sorted((tmp_path / "runs-m8").glob("*.json"))]
    assert len(recs) == 4 and all(r["settings"]["finetune_epochs"] == 1 for r in recs)
    assert (tmp_path / "l1.vsa").exists()
    # the same settings again: everything comes from the cache, the table is the same
    again = evaluate_pruning(tiny, data, 0.55, finetune_epochs=1, jobs=1, **kw)
    assert [r["test_acc"] for r in again["rows"][1:]] == [r["test_acc"] for r in res["rows"][1:]]
    with pytest.raises(ValueError, match="other settings"):
        evaluate_pruning(tiny, data, 0.55, finetune_epochs=2, **kw)
    # an ABC run recorded before a config field existed was made with that field's default
    from dataclasses import asdict

    old = json.loads((tmp_path / "runs-m8" / "uniform-s0.json").read_text())
    abc_fields = {k: v for k, v in asdict(ABCConfig()).items()
                  if k not in ("seed", "flops_target", "channel_multiple", "fitness_metric")}
    old["settings"]["abc"] = abc_fields
    (tmp_path / "runs-m8" / "abc-s0.json").write_text(json.dumps(old))
    kw.update(methods=("abc",), seeds=(0,))
    assert evaluate_pruning(tiny, data, 0.55, finetune_epochs=1, **kw)["rows"][1]["n"] == 1
    with pytest.raises(ValueError, match="other settings"):
        evaluate_pruning(tiny, data, 0.55, finetune_epochs=1,
                         abc_cfg=ABCConfig(fitness_metric="loss"), **kw)


def test_unknown_fitness_metric_is_refused():
    with pytest.raises(ValueError, match=r"accuracy \| loss"):
        ABCConfig(fitness_metric="top5")


def test_a_budget_below_the_smallest_structure_is_refused_before_any_run(tmp_path):
    from vistream.models.pruning import evaluate_pruning
    from vistream.models.pruning.abc import check_budget, smallest_ratio

    m = create_model("resnet56", num_classes=10)
    t = FlopsTable(m)
    floor = smallest_ratio(t, multiple=8)  # every inner width at 8 channels
    assert floor == pytest.approx(t.ratio([8] * len(t.base)))
    assert smallest_ratio(t, multiple=1) < floor
    check_budget(t, floor, multiple=8)
    check_budget(t, 0.25, multiple=1)
    with pytest.raises(ValueError, match=f"below {floor:.3f}"):
        check_budget(t, 0.25, multiple=8)
    with pytest.raises(ValueError, match="smallest structure"):
        ABCPruner(m, None, ABCConfig(flops_target=0.25, channel_multiple=8), progress=False,
                  fitness_fn=lambda w: (0.0, 0.0))
    for method in METHODS:
        with pytest.raises(ValueError, match="smallest structure"):
            baseline_widths(method, m, 0.25, table=t, multiple=8)
    with pytest.raises(ValueError, match="smallest structure"):
        evaluate_pruning(m, _tiny_bundle(), 0.25, methods=("uniform",), out=tmp_path / "e",
                         progress=False, echo=lambda _: None)
    assert not (tmp_path / "e").exists()


def test_abc_is_compared_with_each_baseline_seed_by_seed_in_test_images():
    from vistream.models.pruning import format_table, paired_against

    runs = {"abc": [{"seed": 0, "test_acc": 0.5}, {"seed": 1, "test_acc": 0.6}, {"seed": 2, "test_acc": 0.9}],
            "l1": [{"seed": 0, "test_acc": 0.6}, {"seed": 1, "test_acc": 0.6}, {"seed": 2, "test_acc": 0.7}],
            "uniform": [{"seed": 5, "test_acc": 0.1}]}  # no seed in common: nothing to pair
    p = paired_against(runs, n_test=10)
    assert set(p) == {"l1"}
    assert p["l1"]["per_seed_images"] == [-1, 0, 2]
    assert p["l1"]["mean_images"] == pytest.approx(1 / 3, abs=0.01)
    assert p["l1"]["se_images"] == pytest.approx(np.std([-1, 0, 2], ddof=1) / np.sqrt(3), abs=0.01)
    assert (p["l1"]["won"], p["l1"]["tied"], p["l1"]["lost"]) == (1, 1, 1)
    assert paired_against({"l1": runs["l1"]}, 10) == {}
    table = format_table({"arch": "resnet56", "dataset": "digits", "flops_target": 0.5, "seeds": [0, 1, 2],
                          "latency_batch": 32, "rows": [], "abc_paired": p})
    assert "abc - l1, seed by seed: +0.33 test images, standard error 0.88" in table
    assert "ahead on 1, tied on 1, behind on 1 of 3 seeds" in table
