"""The refinement steps on synthetic feature clouds with corrupted coarse labels."""

from __future__ import annotations

import numpy as np
import pytest

from protorefine.errors import CancelledError, ProtorefineError
from protorefine.refine import RefineConfig, prob_to_mask
from protorefine.refine.classifier import load_checkpoint, save_checkpoint, train_classifier
from protorefine.refine.config import first_changed_stage
from refine_synth import dice, make_cohort, run_steps


@pytest.fixture(scope="module")
def cohort():
    return make_cohort(n_slides=3, shape=(28, 28), dim=24, seed=1)


@pytest.fixture(scope="module")
def result(cohort):
    f, c, t, s, rc, d = cohort
    return run_steps(f, c, s, rc, distance=d, config=RefineConfig(epochs=8))


@pytest.mark.slow
def test_refined_beats_coarse(cohort, result):
    f, c, t, s, rc, d = cohort
    coarse_dice = dice(c >= 0.5, t)
    assert coarse_dice < 0.85
    assert dice(result.refined, t) > coarse_dice + 0.1
    assert dice(result.prob >= 0.5, t) > coarse_dice + 0.1
    # the coarse errors (dilated rim, filled island) are mostly fixed
    wrong = (c >= 0.5) != t
    assert (result.refined[wrong] == t[wrong]).mean() > 0.7


@pytest.mark.slow
def test_result_shapes_and_ranges(cohort, result):
    f, c, t, s, rc, d = cohort
    n = len(c)
    assert result.local_proto.shape == (n,) and result.global_proto.shape == (n,)
    k = len(result.global_scores)
    assert result.global_proto.max() < k
    assert ((result.global_scores >= 0) & (result.global_scores <= 1)).all()
    # local prototype ids are unique per slide
    for lp in np.unique(result.local_proto):
        assert len(np.unique(s[result.local_proto == lp])) == 1
    assert ((result.prob >= 0) & (result.prob <= 1)).all()
    assert ((result.confidence >= 0) & (result.confidence <= 1)).all()
    # one record per round (the default is a single round, see docs/method.md)
    assert [h["round"] for h in result.history] == list(range(1, RefineConfig().rounds + 1))
    assert all(0 <= h["agreement"] <= 1 and h["loss"] > 0 for h in result.history)


@pytest.mark.slow
def test_global_scores_separate_tumour_from_normal_patterns(cohort, result):
    f, c, t, s, rc, d = cohort
    score_of_patch = result.global_scores[result.global_proto]
    assert score_of_patch[t].mean() > score_of_patch[~t].mean() + 0.3


@pytest.mark.slow
def test_deterministic(cohort, result):
    f, c, t, s, rc, d = cohort
    again = run_steps(f, c, s, rc, distance=d, config=RefineConfig(epochs=8))
    np.testing.assert_array_equal(again.local_proto, result.local_proto)
    np.testing.assert_array_equal(again.global_proto, result.global_proto)
    np.testing.assert_allclose(again.prob, result.prob, atol=1e-6)
    other = run_steps(f, c, s, rc, distance=d, config=RefineConfig(epochs=8, seed=5))
    assert not np.allclose(other.prob, result.prob)


@pytest.mark.slow
@pytest.mark.parametrize(
    "change",
    [
        {"use_local": False, "use_global": True},
        {"use_global": True},
        {"dynamic_sampling": False},
        {"rounds": 3},
        {"use_oof": True},
        {"slide_norm": False},
        {"early_stop": 0.0},
    ],
)
def test_ablation_switches_change_behaviour(cohort, result, change):
    f, c, t, s, rc, d = cohort
    r = run_steps(f, c, s, rc, distance=d, config=RefineConfig(epochs=8, **change))
    if "rounds" in change:
        assert len(r.history) == 3
        assert len(result.history) == 1
        np.testing.assert_array_equal(result.pseudo, result.initial.pseudo)
    else:
        assert not np.allclose(r.prob, result.prob)
    if "use_local" in change or "use_global" in change or "use_oof" in change:
        assert not np.allclose(r.initial.proto_score, result.initial.proto_score)


@pytest.mark.slow
def test_no_prototypes_falls_back_to_coarse_labels(cohort):
    f, c, t, s, rc, d = cohort
    r = run_steps(
        f, c, s, rc, distance=d, config=RefineConfig(use_local=False, use_global=False, rounds=1)
    )
    np.testing.assert_array_equal(r.initial.proto_score, c)


def test_corrections_are_hard_labels(cohort):
    f, c, t, s, rc, d = cohort
    corr = np.full(len(c), -1, dtype=np.int8)
    corr[:50] = 1 - t[:50].astype(np.int8)  # deliberately the opposite of the truth
    r = run_steps(f, c, s, rc, distance=d, corrections=corr, config=RefineConfig(epochs=4))
    np.testing.assert_array_equal(r.pseudo[:50], corr[:50])
    np.testing.assert_array_equal(r.prob[:50], corr[:50].astype(np.float32))
    assert (r.confidence[:50] == 1).all()


@pytest.mark.slow
def test_prototype_relabels(cohort, result):
    f, c, t, s, rc, d = cohort
    g = int(np.argmax(result.global_scores))
    r = run_steps(f, c, s, rc, distance=d, marks={g: "normal"}, config=RefineConfig(epochs=4))
    assert (r.initial.pseudo[r.global_proto == g] == 0).all()
    r2 = run_steps(f, c, s, rc, distance=d, marks={g: "ignore"}, config=RefineConfig(epochs=4))
    assert (r2.initial.confidence[r2.global_proto == g] == 0).all()
    with pytest.raises(ProtorefineError, match="prototype label 'maybe'"):
        run_steps(f, c, s, rc, marks={g: "maybe"}, config=RefineConfig(epochs=1))


def test_on_round_and_cancel(cohort):
    f, c, t, s, rc, d = cohort
    seen = []
    run_steps(f, c, s, rc, config=RefineConfig(epochs=2, rounds=2), on_round=seen.append)
    assert [x["round"] for x in seen] == [1, 2]
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(CancelledError):
        run_steps(f, c, s, rc, config=RefineConfig(epochs=2), cancel=cancel)


def test_bad_inputs(cohort):
    f, c, t, s, rc, d = cohort
    with pytest.raises(ProtorefineError, match="covers all tissue"):
        run_steps(f, np.ones_like(c), s, rc)
    with pytest.raises(ProtorefineError, match="no patch lies inside"):
        run_steps(f, np.zeros_like(c), s, rc)
    with pytest.raises(ProtorefineError, match="rc: expected shape"):
        run_steps(f, c, s, rc[:10])
    with pytest.raises(ProtorefineError, match="temperature"):
        RefineConfig(temperature=0)
    with pytest.raises(ProtorefineError, match="early_stop=1.0"):
        RefineConfig(early_stop=1.0)
    with pytest.raises(ProtorefineError, match="outline_smoothing=7"):
        RefineConfig(outline_smoothing=7)
    with pytest.raises(ProtorefineError, match="unknown setting"):
        RefineConfig.from_dict({"bogus": 1})


def test_config_roundtrip_and_invalidation():
    cfg = RefineConfig(patch_size=128, rounds=2)
    assert RefineConfig.from_json(cfg.to_json()) == cfg
    assert first_changed_stage(cfg, cfg) is None
    assert first_changed_stage(cfg, cfg.replace(threshold=0.4)) == "output"
    assert first_changed_stage(cfg, cfg.replace(outline_smoothing=0)) == "output"
    assert first_changed_stage(cfg, cfg.replace(rounds=1)) == "classifier"
    assert first_changed_stage(cfg, cfg.replace(encoder="colour-texture")) == "features"
    assert first_changed_stage(cfg, cfg.replace(patch_size=64, rounds=1)) == "grid"
    assert first_changed_stage(cfg, cfg.replace(device="cpu")) is None


def test_prob_to_mask_cleans_up():
    prob = np.zeros((12, 12), dtype=np.float32)
    prob[2:9, 2:9] = 0.9
    prob[5, 5] = 0.0  # one-patch hole: filled
    prob[11, 11] = 0.95  # one-patch speck: removed
    cfg = RefineConfig(smooth_sigma=0, min_area=2, max_hole=2)
    m = prob_to_mask(prob, config=cfg)
    assert m[5, 5] and not m[11, 11] and m[2:9, 2:9].all() and m.sum() == 49
    tissue = np.ones_like(m)
    tissue[2, 2] = False
    assert not prob_to_mask(prob, tissue=tissue, config=cfg)[2, 2]


def test_checkpoint_roundtrip_and_bad_file(cohort, tmp_path):
    f, c, t, s, rc, d = cohort
    import torch

    x = torch.from_numpy(f)
    cr = train_classifier(
        x,
        (c >= 0.5).astype(np.int8),
        np.ones(len(c), np.float32),
        c,
        config=RefineConfig(rounds=1, epochs=1),
    )
    path = tmp_path / "head.pt"
    save_checkpoint(cr.model, path)
    model = load_checkpoint(path)
    model.eval()
    with torch.no_grad():
        p = torch.sigmoid(model(x)).numpy()
    np.testing.assert_allclose(p, cr.prob, atol=1e-5)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ProtorefineError, match="bad.pt: checkpoint does not load"):
        load_checkpoint(bad)


@pytest.mark.slow
def test_feature_blocks_train_one_net_per_encoder(cohort, tmp_path):
    """Features of two encoders side by side: one net each, probabilities averaged, saved whole."""
    import torch

    f, c, t, s, rc, d = cohort
    rng = np.random.default_rng(0)
    weak = (f[:, :6] + rng.normal(0, 2, (len(f), 6))).astype(np.float32)  # a noisier encoder
    both = np.concatenate([f, weak], axis=1)
    blocks = (f.shape[1], 6)
    res = run_steps(both, c, s, rc, distance=d, config=RefineConfig(epochs=8), blocks=blocks)
    assert dice(res.refined, t) > dice(c >= 0.5, t) + 0.1
    x = torch.from_numpy(both)
    cr = train_classifier(
        x,
        (c >= 0.5).astype(np.int8),
        np.ones(len(c), np.float32),
        c,
        config=RefineConfig(rounds=1, epochs=3),
        blocks=blocks,
    )
    model = cr.model.eval()
    assert [net[0].in_features for net in model.nets] == [f.shape[1], 6]
    with torch.no_grad():
        per_net = torch.sigmoid(model.group_logits(x)).numpy()
    np.testing.assert_allclose(cr.prob, per_net.mean(1), atol=1e-5)
    assert not np.allclose(per_net[:, 0], per_net[:, 1], atol=0.05)  # two different nets
    path = tmp_path / "two.pt"
    save_checkpoint(cr.model, path)
    with torch.no_grad():
        again = torch.sigmoid(load_checkpoint(path).eval()(x)).numpy()
    np.testing.assert_allclose(again, cr.prob, atol=1e-5)
    with pytest.raises(ProtorefineError, match=r"feature blocks \(10, 10\)"):
        run_steps(both, c, s, rc, distance=d, config=RefineConfig(epochs=1), blocks=(10, 10))


def test_single_net_checkpoint_of_an_earlier_version_loads(cohort, tmp_path):
    import torch

    f, c, *_ = cohort
    x = torch.from_numpy(f)
    cr = train_classifier(
        x,
        (c >= 0.5).astype(np.int8),
        np.ones(len(c), np.float32),
        c,
        config=RefineConfig(rounds=1, epochs=1),
    )
    old = {
        k.replace("nets.0.", "net.", 1): v
        for k, v in cr.model.state_dict().items()
        if k != "groups"
    }
    torch.save(old, tmp_path / "old.pt")
    with torch.no_grad():
        p = torch.sigmoid(load_checkpoint(tmp_path / "old.pt").eval()(x)).numpy()
    np.testing.assert_allclose(p, cr.prob, atol=1e-5)


def test_fine_mask_follows_the_probability_inside_patches():
    from protorefine.refine.postprocess import prob_to_fine_mask

    prob = np.zeros((10, 10), dtype=np.float32)
    prob[2:8, 2:8] = 1.0
    tissue = np.ones_like(prob, dtype=bool)
    tissue[:, 9] = False
    cfg = RefineConfig(min_area=0, max_hole=0)
    fine = prob_to_fine_mask(prob, tissue=tissue, config=cfg, factor=4)
    assert fine.shape == (40, 40)
    assert fine[20, 20] and not fine[2, 2]  # centre of the block in, far corner out
    assert not fine[:, 36:].any()  # never outside tissue
    coarse = prob_to_mask(prob, tissue=tissue, config=cfg)
    # the outline passes through the edge patches instead of along the grid lines
    assert 0.5 * coarse.sum() < fine.sum() / 16 < 1.2 * coarse.sum()
    assert prob_to_fine_mask(prob, tissue=tissue, config=cfg, factor=1).shape == (10, 10)


def test_carry_marks_follows_patches_not_ids():
    from protorefine.refine.prototypes import carry_marks

    xy = np.array([[x, 0.0] for x in range(0, 800, 100)])  # eight patches in a row
    old = {"s": (xy, np.array([0, 0, 0, 0, 1, 1, 1, 1]))}
    # rebuilt: ids swapped, and a third prototype straddling both old ones
    new = {"s": (xy + 10, np.array([1, 1, 1, 2, 2, 0, 0, 0]))}
    marks = carry_marks({0: "normal", 1: "tumour"}, old, new, radius=75)
    assert marks == {1: "normal", 0: "tumour"}  # the straddling prototype 2 is left unmarked
    assert carry_marks({0: "normal"}, old, {"s": (xy + 500, new["s"][1])}, radius=75) == {}
    assert carry_marks({}, old, new, radius=75) == {}


@pytest.mark.parametrize("value", [0.0, 1.0, 1.5, -0.1, float("nan")])
def test_a_threshold_that_cannot_draw_an_outline_is_refused(value):
    """At 1 only corrected patches (probability exactly 1) would pass, at 0 every tissue patch:
    neither is an outline the model drew."""
    with pytest.raises(ProtorefineError, match=r"threshold=.*above 0 and below 1") as exc:
        RefineConfig(threshold=value)
    assert "\n" not in str(exc.value)
    RefineConfig(threshold=0.05)
    RefineConfig(threshold=0.95)


def test_a_slide_alone_gets_the_local_prototypes_it_gets_among_the_cohort(cohort):
    """What a cluster's worker computes from one slide (in the cosine space the client
    fitted on the cohort) is what one machine computes for it, in any slide order."""
    from protorefine.refine import Cohort
    from protorefine.refine.steps import prototypes_step, slide_prototypes_step

    f, c, t, s, rc, d = cohort
    ids = [str(i) for i in range(int(s.max()) + 1)]
    coh = Cohort.stack([(sid, f[s == i], rc[s == i]) for i, sid in enumerate(ids)], blocks=(16, 8))
    coh.coarse, coh.distance = c, d
    config = RefineConfig()
    protos = prototypes_step(coh, config)
    space = coh.cosine_space(config)
    for i in reversed(range(len(ids))):  # the last slide first, as a worker may
        rows = coh.slide_rows(ids[i])
        alone = slide_prototypes_step(f[rows], c[rows], d[rows], space, config, i)
        mine = protos.local_slide == i
        np.testing.assert_array_equal(alone.centers, protos.local_centers[mine])
        np.testing.assert_array_equal(alone.scores, protos.local_scores[mine])
        offset = int(np.flatnonzero(mine)[0])
        np.testing.assert_array_equal(alone.assign + offset, protos.local_proto[rows])
    # another slide's place in the cohort draws other k-means seeds
    other = slide_prototypes_step(f[rows], c[rows], d[rows], space, config, 1)
    assert not np.array_equal(other.assign, alone.assign) or not np.array_equal(
        other.centers, alone.centers
    )
