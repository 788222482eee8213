"""An lm-eval `LM` over an exported model loaded with transformers, on CPU or GPU.

lm-eval's own "hf" backend needs `accelerate`; this small adapter needs only what the stack
already has, and scores exactly as the harness defines it (sum of continuation log-probs,
greedy flag, rolling windows for perplexity tasks)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window


class ExportedCausalLM(TemplateLM):
    def __init__(self, model, tokenizer, max_length: int | None = None, batch_size: int = 8):
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length or getattr(model.config, "max_position_embeddings", 2048)
        self.batch_size = batch_size
        self.torch_device = next(model.parameters()).device

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
        return self.tokenizer(string, add_special_tokens=bool(add_special_tokens))["input_ids"]

    def tok_decode(self, ids) -> str:
        return self.tokenizer.decode(ids)

    @torch.no_grad()
    def _score(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        tokens = (context + continuation)[-(self.max_length + 1):]
        inp = torch.tensor(tokens[:-1], device=self.torch_device)[None]
        logprobs = F.log_softmax(self.model(inp).logits[0].float(), dim=-1)
        n = len(continuation)
        cont_logprobs = logprobs[-n:]
        target = torch.tensor(tokens[-n:], device=self.torch_device)
        greedy = bool((cont_logprobs.argmax(-1) == target).all())
        return float(cont_logprobs.gather(1, target[:, None]).sum()), greedy

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        return [self._score(ctx, cont) for _, ctx, cont in requests]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        results = []
        for (text,) in [r.args for r in requests]:
            windows = map(make_disjoint_window, get_rolling_token_windows(
                self.tok_encode(text), self.prefix_token_id, self.max_length, context_len=1))
            results.append(sum(self._score(ctx, cont)[0] for ctx, cont in windows))
        return results

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for context, gen_kwargs in [r.args for r in requests]:
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else until
            max_new = int(gen_kwargs.get("max_gen_toks", 64))
            ids = torch.tensor(self.tok_encode(context)[-(self.max_length - max_new):], device=self.torch_device)[None]
            gen = self.model.generate(ids, max_new_tokens=max_new, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id or 0)
            text = self.tok_decode(gen[0, ids.shape[1]:].tolist())
            for stop in until:
                text = text.split(stop)[0]
            out.append(text)
        return out
