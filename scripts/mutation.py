"""Mutation score per module with mutmut: a measure of how much the tests notice, not a gate.

Each module runs in its own work directory (.mutation/<module>/, links to the repository) with
the repository's [tool.mutmut] settings narrowed to that module's files and to the tests that
exercise it in-process, one test process at a time. Prints killed / (mutants - equivalent) per
module; equivalent mutants (no test can tell them apart from the original) are listed below with
the reason and left out of the score.

    python scripts/mutation.py                 # every module
    python scripts/mutation.py filters dedup   # some
    python scripts/mutation.py dedup --sample 120 --seed 1   # a seeded uniform sample of its mutants

With --sample N --seed S: N of the module's mutants drawn uniformly (sorted names, random.Random(S)),
scored killed / (N - equivalent) with a 95 % Wilson interval. A rerun tests only those not yet
tested; --retest [TEST ...] tests the sample's survivors again after tests were added (with only the
given tests, in .mutation/<module>-retest/, so a survivor does not rerun every slow test first).
"""
from __future__ import annotations

import argparse
import math
import os
import random
import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".mutation"
LINKED = ("stack_common", "data_pipeline", "tokenizer_training", "pretrain", "checkpoints_tools",
          "tests", "configs", "data")

# module -> (files to mutate, tests that exercise them in-process; None: not measurable yet)
CKPT_TESTS = "tests/test_checkpoints_tools.py::"
MODULES = {
    "filters": (["data_pipeline/filters/*"],
                ["tests/test_data_pipeline_rules.py", "tests/test_content_rules.py",
                 "tests/test_pipeline_inputs.py::test_rule_typos_are_errors",
                 "tests/test_pipeline_inputs.py::test_typed_thresholds_reach_the_rule"]),
    # Not the Ray tests (test_ray_cluster.py, the Ray executor test): a Ray cluster started in a forked
    # mutant worker hangs. Tests with workers=2 count: spawned workers import the mutated copy and
    # inherit MUTANT_UNDER_TEST, but only functions also called in the pytest process get mapped to them.
    "dedup": (["data_pipeline/dedup/*"],
              [*(f"tests/{f}.py" for f in ("test_dedup", "test_dedup_chinese", "test_dedup_partitions",
                                          "test_line_dedup_partitions", "test_dedup_semantic",
                                          "test_dedup_semantic_partitioned", "test_dedup_units")),
               "--deselect", "tests/test_dedup.py::test_ray_executor_matches_local"]),
    # Unit tests only: the export tests train a run in their fixture, which every mutant would redo.
    "layout": (["checkpoints_tools/layout.py"],
               ["tests/test_layout.py"] + [CKPT_TESTS + t for t in ("test_alibi_slopes_follow_baichuan_rule", "test_qkv_grouped_rows_split_merge_and_w_pack",
                                         "test_tp_shard_rules", "test_baichuan_modeling_equals_llama_with_folded_normhead",
                                         "test_generation_with_cache_matches_full_forward",
                                         "test_released_baichuan2_layout_is_read")]),
    # In-process tests only: mutmut maps tests to functions in the pytest process, so the spawned-rank
    # tests (tests/_dist_helpers.py) count for nothing here.
    "loss": (["pretrain/model/loss.py"], ["tests/test_loss_optim.py"]),
    "optim": (["pretrain/optim.py"], ["tests/test_loss_optim.py"]),
}

# Settings of one module on top of [tool.mutmut]: the loss tests start a gloo process group, which a
# worker forked from the process that ran them once cannot start again (it hangs).
MODULE_SETTINGS = {"loss": {"process_isolation": "forkserver"}, "optim": {"process_isolation": "forkserver"}}

# Mutants no test can kill because the program behaves the same; left out of the score.
_LAYOUT = "checkpoints_tools.layout.x_"
_LOSS = "pretrain.model.loss."
_DEDUP = "data_pipeline.dedup."
TP_ONLY = "TP > 1 only: differs only across tensor-parallel ranks; one process has TP = 1"
EQUIVALENT: dict[str, str] = {
    **{f"{_LAYOUT}{name}": "drops dim=0 from chunk/cat/split, whose default is dim 0"
       for name in ("tp_shard__mutmut_18", "tp_shard__mutmut_25", "tp_shard__mutmut_30", "tp_shard__mutmut_52",
                    "hf_layer_tensors__mutmut_13", "unpack_w_pack__mutmut_4", "w_pack__mutmut_4")},
    f"{_LAYOUT}merge_qkv__mutmut_5": "q.shape[+1] of a 2-D q is q.shape[-1]",
    f"{_LAYOUT}merge_qkv__mutmut_6": "q.shape[-2] = heads x head_dim = hidden_size = q.shape[-1]",
    f"{_LAYOUT}normalize_rows__mutmut_22": "norm(dim=+1) of a 2-D weight is norm(dim=-1)",
    f"{_LAYOUT}normalize_rows__mutmut_1": "block_rows 8193 instead of 8192: the same rows, other blocks",
    f"{_LAYOUT}normalize_rows__mutmut_9": "blocks starting at every row overwrite rows with the same values",
    **{f"{_LAYOUT}arch_from_meta__mutmut_{n}": "position default other than \"alibi\" still reads as rope"
       for n in (90, 93, 100, 101)},
    **{f"{_LOSS}xǁ_VocabParallelMaxǁbackward__mutmut_{n}": "zeros without dtype: fp32, as the logits always are"
       for n in (4, 7)},
    f"{_LOSS}xǁ_VocabParallelMaxǁbackward__mutmut_20": ".to(None) changes nothing",
    **{f"{_LOSS}xǁ_VocabParallelMaxǁforward__mutmut_{n}": "int64 ones instead of bool ones: the same product"
       for n in (48, 50)},
    f"{_LOSS}x_mask_vocab_padding__mutmut_26": 'float("-INF") is float("-inf")',
    f"{_LOSS}x_lm_loss_terms__mutmut_32": 'float("-INF") is float("-inf")',
    f"{_LOSS}x_lm_loss_terms__mutmut_20": "with z_loss_coeff 0 the total adds 0 x z",
    **{f"pretrain.optim.x_no_decay_on_norms_and_biases__mutmut_{n}": "the predicate's name is a label in logs"
       for n in (2, 6, 7)},
    **{name: "on CPU: device=None is the CPU" for name in (
        f"{_LOSS}xǁ_VocabParallelMaxǁbackward__mutmut_5", f"{_LOSS}xǁ_VocabParallelMaxǁbackward__mutmut_8",
        f"{_LOSS}x_mask_vocab_padding__mutmut_11", f"{_LOSS}x_mask_vocab_padding__mutmut_13")},
    # Code that only runs with TP > 1 (the cross-rank maximum and its owner): one process has TP = 1.
    # The spawned TP=2 parity tests run it, out of mutmut's sight.
    **{f"{_LOSS}xǁ_VocabParallelMaxǁforward__mutmut_{n}": TP_ONLY for n in (7, 9, 10, 11, 13, 14, 44, *range(15, 40))},
    **{f"{_LOSS}x_vocab_parallel_max__mutmut_{n}": TP_ONLY for n in (1, 2, 3, 5)},
    **{f"{_LOSS}x_mask_vocab_padding__mutmut_{n}": TP_ONLY for n in (5, 7, 19)},
    f"{_LOSS}xǁ_VocabParallelMaxǁbackward__mutmut_22": TP_ONLY,
    # dedup (sampled: scripts/mutation.py dedup --sample 120 --seed 1; source as of d32d3d4)
    f"{_DEDUP}balance.x__run__mutmut_155": "looks for finished split files elsewhere: a resume splits every shard "
                                          "again, to the same files",
    f"{_DEDUP}balance.x_plot_sizes__mutmut_7": "unstable sort of the bars: tied clusters have equal sizes and kept "
                                              "counts, so the same bars",
    f"{_DEDUP}minhash.x_run__mutmut_201": "the decisions step's tasks run in the driver instead of the workers: "
                                         "the same files",
    f"{_DEDUP}semantic.x_decide__mutmut_159": "float64 instead of float32 for the (0, 1) centroids of an input "
                                             "without embeddings: only their count is read",
    f"{_DEDUP}semantic.x_decide__mutmut_204": "the partition step's tasks run in the driver instead of the workers: "
                                             "the same files",
    f"{_DEDUP}semantic.x_fit_sample__mutmut_41": "reads every column of the shard rather than only `text`: "
                                                "the same texts",
    **{f"data_pipeline.filters.english.x_gopher_repetition__mutmut_{n}":
       "min_dup_line_chars 1 instead of 0 when unset: an empty line or paragraph never counts as a repeat anyway"
       for n in (10, 39)},
}

KILLED = {"killed", "timeout", "caught by type check"}


def module_pyproject(name: str, tests: list[str] | None = None) -> str:
    """The repository's pyproject.toml with [tool.mutmut] narrowed to one module (and to `tests`)."""
    text = (REPO / "pyproject.toml").read_text()
    base = tomllib.loads(text)["tool"]["mutmut"]
    only, tests = MODULES[name][0], tests or MODULES[name][1]
    lines = [f"{k} = {toml_value(v)}" for k, v in base.items()
             if k not in ("only_mutate", "pytest_add_cli_args_test_selection")]
    lines += [f"only_mutate = {toml_value(only)}", f"pytest_add_cli_args_test_selection = {toml_value(tests)}"]
    lines += [f"{k} = {toml_value(v)}" for k, v in MODULE_SETTINGS.get(name, {}).items()]
    section = "[tool.mutmut]\n" + "\n".join(lines) + "\n"
    return re.sub(r"(?ms)^\[tool\.mutmut\]\n.*?(?=^\[|\Z)", lambda _: section + "\n", text)


def toml_value(v) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(v)


def prepare(name: str, tests: list[str] | None = None) -> Path:
    work = WORK / (f"{name}-retest" if tests else name)
    work.mkdir(parents=True, exist_ok=True)
    for entry in LINKED:
        link = work / entry
        if not link.is_symlink():
            link.symlink_to(REPO / entry)
    (work / "pyproject.toml").write_text(module_pyproject(name, tests))
    return work


# mutmut generates mutants only inside `mutmut run`; this runs just that step (its own functions), so
# that a sample can be drawn from every mutant before any is tested.
GENERATE = ("import os; from mutmut.__main__ import copy_src_dir, copy_also_copy_files, setup_source_paths, "
            "create_mutants; os.makedirs('mutants', exist_ok=True); copy_src_dir(); copy_also_copy_files(); "
            "setup_source_paths(); create_mutants(1)")


def run_module(name: str, children: int, sample: int | None = None, seed: int = 0,
               retest: list[str] | None = None) -> dict:
    if MODULES[name][1] is None:
        return {"module": name, "mutants": 0, "equivalent": 0, "killed": 0, "score": float("nan"),
                "interval": (float("nan"),) * 2, "generated": None,
                "survivors": ["not measured: its code runs only in spawned ranks (see MODULES)"]}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", BC_NO_PROGRESS="1")
    mutmut = [sys.executable, "-m", "mutmut"]

    def results(work: Path) -> dict:
        out = subprocess.run([*mutmut, "results", "--all", "true"], cwd=work, env=env,
                             capture_output=True, text=True, check=True).stdout
        return dict(re.findall(r"^\s+(\S+): (.+)$", out, flags=re.M))

    def run(work: Path, names: list[str]) -> dict:
        subprocess.run([*mutmut, "run", "--max-children", str(children), *names], cwd=work, env=env, check=False)
        return results(work)

    work = prepare(name)
    if not sample:
        return {**score(name, run(work, [])), "generated": None}
    # A sample: only its untested mutants run (a rerun continues).
    subprocess.run([sys.executable, "-c", GENERATE], cwd=work, env=env, check=True, stdout=subprocess.DEVNULL)
    statuses = results(work)
    names = random.Random(seed).sample(sorted(statuses), min(sample, len(statuses)))
    todo = sorted(n for n in names if statuses[n] == "not checked")
    if todo:
        statuses = run(work, todo)
    survivors = sorted(n for n in names if statuses[n] not in KILLED | {"not checked"} and n not in EQUIVALENT)
    if retest is not None and survivors:
        # The survivors again, after tests were added: with only the given tests (a work directory of
        # their own, so each survivor runs just those), or with the module's selection. A mutant those
        # tests kill is killed by the selection, which includes them.
        again = prepare(name, retest)
        subprocess.run([sys.executable, "-c", GENERATE], cwd=again, env=env, check=True, stdout=subprocess.DEVNULL)
        retested = run(again, survivors)
        statuses.update({n: retested[n] for n in survivors})
    tested = {n: statuses[n] for n in names if statuses[n] != "not checked"}     # all, unless interrupted
    return {**score(name, tested), "generated": len(statuses)}


def score(name: str, statuses: dict) -> dict:
    counted = {k: v for k, v in statuses.items() if k not in EQUIVALENT}
    killed = sum(v in KILLED for v in counted.values())
    survivors = sorted(k for k, v in counted.items() if v not in KILLED)
    result = {"module": name, "mutants": len(statuses), "equivalent": len(statuses) - len(counted),
              "killed": killed, "score": killed / len(counted) if counted else float("nan"),
              "interval": wilson(killed, len(counted)),
              "survivors": [f"{k}: {counted[k]}" for k in survivors]}
    return result


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k / n."""
    if n == 0:
        return float("nan"), float("nan")
    p, zz = k / n, z * z / n
    mid, half = (p + zz / 2) / (1 + zz), z / (1 + zz) * math.sqrt(p * (1 - p) / n + zz / (4 * n))
    return mid - half, mid + half


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", metavar="MODULE", help=f"any of {', '.join(MODULES)} (default: all)")
    parser.add_argument("--children", type=int, default=1, help="mutants tested at once (default 1)")
    parser.add_argument("--survivors", action="store_true", help="list the surviving mutants")
    parser.add_argument("--sample", type=int, metavar="N", help="test a uniform random sample of N mutants")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    parser.add_argument("--retest", nargs="*", metavar="TEST",
                        help="with --sample: test its survivors again, with only these tests if given")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.modules) - set(MODULES))
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}; choose from {', '.join(MODULES)}")
    results = [run_module(m, args.children, args.sample, args.seed, args.retest)
               for m in (args.modules or list(MODULES))]
    print(f"\n{'module':<8} {'mutants':>8} {'tested':>7} {'equiv.':>7} {'killed':>7} {'score':>7}  95 % interval")
    for r in results:
        low, high = r["interval"]
        print(f"{r['module']:<8} {r['generated'] or r['mutants']:>8} {r['mutants']:>7} {r['equivalent']:>7} "
              f"{r['killed']:>7} {r['score']:>7.1%}  {low:.1%} - {high:.1%}")
        if args.survivors:
            print("\n".join("    " + s for s in r["survivors"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
