"""Evaluation speed: lm-eval's batched HF backend (what eval-series uses) against the old
one-request-at-a-time scorer, on every export of a series and a local cloze task. Prints
loglikelihood requests per second for each (both in fp32), and the largest difference between
the two backends' loglikelihoods: in fp64 they must agree within 1e-6 (same requests, tokens
and positions; padding and batching change nothing), and in fp32 they differ by rounding only
(batched matmuls of other shapes: a few 1e-6 on sums of ~50 nats).

    .venv/bin/python bench/bench_eval.py --exports demo_out/exports --text demo_out/raw/heldout-en.txt

The reference scorer below is the project's previous lm-eval adapter (before issue 17): one
forward pass per request, no padding, no batching. Its numbers do not come from lm-eval's
backend, so the agreement check is independent of the code being measured.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("BC_NO_PROGRESS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from lm_eval.api.model import TemplateLM  # noqa: E402


class SequentialLM(TemplateLM):
    """The old backend: each (context, continuation) scored by its own forward pass."""

    def __init__(self, model_dir: Path, dtype: torch.dtype = torch.float32):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        super().__init__()
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True,
                                                          dtype=dtype).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
        self.max_length = self.model.config.max_position_embeddings

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
        return self.tokenizer(string, add_special_tokens=bool(add_special_tokens))["input_ids"]

    @torch.no_grad()
    def _score(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        tokens = (context + continuation)[-(self.max_length + 1):]
        logits = self.model(torch.tensor(tokens[:-1])[None]).logits[0]
        logprobs = F.log_softmax(logits.double() if logits.dtype == torch.float64 else logits.float(), dim=-1)
        n = len(continuation)
        target = torch.tensor(tokens[-n:])
        cont = logprobs[-n:]
        return float(cont.gather(1, target[:, None]).sum()), bool((cont.argmax(-1) == target).all())

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        return [self._score(ctx, cont) for _, ctx, cont in requests]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError

    def generate_until(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError


def timed_loglikelihoods(lm, task: str, manager, limit) -> tuple[list[float], float]:
    """Every loglikelihood the task asks for (in request order) and the seconds spent scoring."""
    import lm_eval

    spent, scores = [0.0], []
    inner = lm.loglikelihood

    def timing(requests, *args, **kwargs):
        start = time.perf_counter()
        out = inner(requests, *args, **kwargs)
        spent[0] += time.perf_counter() - start
        scores.extend(ll for ll, _ in out)
        return out

    lm.loglikelihood = timing
    lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=manager, limit=limit, log_samples=False)
    return scores, spent[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exports", default=str(REPO / "demo_out" / "exports"))
    parser.add_argument("--text", default=str(REPO / "demo_out" / "raw" / "heldout-en.txt"),
                        help="held-out text the cloze task is made from")
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)

    from checkpoints_tools.lm_eval_adapter import hf_lm, task_manager
    from checkpoints_tools.local_tasks import write_cloze_task
    from checkpoints_tools.series import list_exports

    tasks = Path(tempfile.mkdtemp(prefix="bench_eval_tasks_"))
    write_cloze_task(args.text, tasks, "bench_cloze", n_items=args.items)
    manager = task_manager(str(tasks), ("bench_cloze",))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads; task bench_cloze "
          f"({args.items} items x 4 choices) from {args.text}; batch size {args.batch_size}")
    header = (f"{'export':<16} {'requests':>8} {'old req/s':>10} {'HFLM fp32 req/s':>16} {'speedup':>8} "
              f"{'max|dLL| fp32':>14} {'max|dLL| fp64':>14}")
    extra = f" {'HFLM bf16 req/s':>16}" if device == "cuda" else ""
    print(header + extra)
    totals = [0, 0.0, 0.0]
    for _, export in list_exports(Path(args.exports)):
        old_ll, old_s = timed_loglikelihoods(SequentialLM(export), "bench_cloze", manager, None)
        new_ll, new_s = timed_loglikelihoods(hf_lm(export, args.batch_size, device=device, dtype=torch.float32),
                                             "bench_cloze", manager, None)
        old64, _ = timed_loglikelihoods(SequentialLM(export, torch.float64), "bench_cloze", manager, None)
        new64, _ = timed_loglikelihoods(hf_lm(export, args.batch_size, device="cpu", dtype=torch.float64),
                                        "bench_cloze", manager, None)
        fp32 = max(abs(a - b) for a, b in zip(old_ll, new_ll))
        worst = max(abs(a - b) for a, b in zip(old64, new64))
        n = len(new_ll)
        line = (f"{export.name:<16} {n:>8} {n / old_s:>10.1f} {n / new_s:>16.1f} {old_s / new_s:>7.1f}x "
                f"{fp32:>14.2e} {worst:>14.2e}")
        if device == "cuda":
            _, bf16_s = timed_loglikelihoods(hf_lm(export, args.batch_size, device=device, dtype=torch.bfloat16),
                                             "bench_cloze", manager, None)
            line += f" {n / bf16_s:>16.1f}"
        print(line, flush=True)
        if len(old64) != len(new64) != n or worst > 1e-6:
            print(f"  MISMATCH: {len(old64)} vs {len(new64)} requests, fp64 difference {worst:.3e} > 1e-6")
            return 1
        totals = [totals[0] + n, totals[1] + old_s, totals[2] + new_s]
    print(f"{'all':<16} {totals[0]:>8} {totals[0] / totals[1]:>10.1f} {totals[0] / totals[2]:>16.1f} "
          f"{totals[1] / totals[2]:>7.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
