"""Every parallel layout computes the same function: from the same initial weights (a TP=1 dist
checkpoint loaded into each layout), losses, z-loss, max logit and gradient norm over 3 AdamW
steps equal TP=1 PP=1 within 1e-5. Two grouped launches on gloo: 2 and 4 processes."""
import math

import pytest

from _dist_helpers import launch, parity_worker, reference_run, tiny_model_config

TOL = 1e-5
METRICS = ("lm_loss", "z_loss", "total_loss", "max_logit", "grad_norm")

# (config, tp, pp, vpp) per launch; DP = world / (tp x pp).
TWO_PROCESSES = {"rope": [(2, 1, None), (1, 2, None), (1, 1, None), (1, 1, None, "distopt", "overlap")],
                 "alibi": [(2, 1, None), (2, 1, None, "recompute")]}
FOUR_PROCESSES = {"rope": [(2, 2, None), (1, 2, 2)], "alibi": [(2, 2, 2)]}


def parity_runs(world: int, layouts: dict) -> dict:
    """One launch of `world` processes running every layout in turn."""
    _, weights = reference_run()
    runs = [(name, tiny_model_config(name), f"{weights}/{name}", layout)
            for name, items in layouts.items() for layout in items]
    results = launch(world, parity_worker, runs)
    for key in results[0]:
        assert all(r[key] == results[0][key] for r in results), f"ranks disagree for {key}"
    return results[0]


@pytest.fixture(scope="module")
def reference():
    return reference_run()[0]


@pytest.fixture(scope="module")
def two_process_runs():
    return parity_runs(2, TWO_PROCESSES)


@pytest.fixture(scope="module")
def four_process_runs():
    return parity_runs(4, FOUR_PROCESSES)


def assert_same_training(history: list, reference: list):
    assert len(history) == len(reference) == 3
    for step, (got, want) in enumerate(zip(history, reference)):
        for key in METRICS:
            assert abs(got[key] - want[key]) <= TOL, f"step {step} {key}: {got[key]} vs {want[key]}"
        assert got["tokens"] == want["tokens"] and got["skipped"] == want["skipped"] == 0
    # The steps really trained: the loss moved and z-loss is a separate positive term.
    assert reference[0]["lm_loss"] != reference[-1]["lm_loss"]
    assert all(m["z_loss"] > 0 and m["total_loss"] > m["lm_loss"] for m in reference)


@pytest.mark.slow
@pytest.mark.parametrize("name,layout", [("rope", (2, 1, None)), ("rope", (1, 2, None)),
                                         ("rope", (1, 1, None)), ("rope", (1, 1, None, "distopt", "overlap")),
                                         ("alibi", (2, 1, None)), ("alibi", (2, 1, None, "recompute"))],
                         ids=["tp2", "pp2", "dp2", "dp2-distributed-optimizer-overlap", "alibi-tp2",
                              "alibi-tp2-recompute"])
def test_two_process_layouts_match_tp1(two_process_runs, reference, name, layout):
    assert_same_training(two_process_runs[(name, *layout)], reference[name])


@pytest.mark.slow
@pytest.mark.parametrize("name,tp,pp,vpp", [("rope", 2, 2, None), ("rope", 1, 2, 2), ("alibi", 2, 2, 2)],
                         ids=["tp2-pp2", "pp2-vpp2-dp2", "alibi-tp2-pp2-vpp2"])
def test_four_process_layouts_match_tp1(four_process_runs, reference, name, tp, pp, vpp):
    assert_same_training(four_process_runs[(name, tp, pp, vpp)], reference[name])


def test_reference_alibi_differs_from_rope(reference):
    """The ALiBi model is the RoPE model's weights with a bias instead of rotations: same initial weights,
    every layer's attention adds the ALiBi bias and nothing rotates; the position encoding alone moves the
    first loss by far more than the parity tolerance, so a layout that lost it would fail parity."""
    wiring = reference["checks"]["positions"]
    assert wiring["same_init"]
    assert wiring["rope"] == {"alibi": [False] * 4, "rotary": True}
    assert wiring["alibi"] == {"alibi": [True] * 4, "rotary": False}
    first = {name: reference[name][0]["lm_loss"] for name in ("rope", "alibi")}
    assert all(math.log(1000) < loss < math.log(1000) + 1 for loss in first.values()), first   # near-uniform start
    assert abs(first["rope"] - first["alibi"]) > 100 * TOL, first
