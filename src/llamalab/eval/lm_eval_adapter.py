"""lm-evaluation-harness can drive our model: `--model llamalab --model_args pretrained=PATH`.

Importing this module registers the model name with lm-eval's registry. Since lm-eval only imports its
own modules, run it through this module (which then hands over to lm-eval's own command line):

    python -m llamalab.eval.lm_eval_adapter --model llamalab \
        --model_args pretrained=SmolLM2-135M-Instruct.Q4_1.gguf,batch_size=16 --tasks arc_easy

or in Python: `lm_eval.simple_evaluate(model=LlamalabLM.from_pretrained(path), tasks=[...])`.
"""

from __future__ import annotations

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window, simple_parse_args_string

from ..runtime import load_runnable
from .llm import LLM


@register_model("llamalab")
class LlamalabLM(LM):
    def __init__(self, pretrained: str | None = None, device: str | None = None, dtype: str = "float32",
                 batch_size=16, max_length: int | None = None, max_gen_toks: int = 256, llm: LLM | None = None, **_):
        super().__init__()
        if llm is None:
            if str(device).startswith("cuda") and not torch.cuda.is_available():
                device = None  # lm-eval's CLI passes cuda by default: the default device instead
            rt = load_runnable(pretrained, device=device, dtype=dtype)
            llm = LLM(rt.model, rt.tokenizer, batch_size=int(batch_size), max_length=max_length)
        self.llm = llm
        self.max_gen_toks = int(max_gen_toks)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
        """model_args win over lm-eval's global --device/--batch_size (whose defaults are always passed)."""
        extra = {k: v for k, v in (additional_config or {}).items()
                 if k in ("device", "batch_size") and v is not None and v != "auto"}
        return cls(**{**extra, **arg_dict})

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def from_pretrained(cls, pretrained: str, **kw) -> "LlamalabLM":
        return cls(pretrained, **kw)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return self.llm.loglikelihood([r.args for r in requests])

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Whole-text log-likelihood in disjoint windows of the context length (as lm-eval's HF backend)."""
        out = []
        for (text,) in (r.args for r in requests):
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.llm.encode(text), prefix_token=self.llm.prefix_id,
                max_seq_len=self.llm.max_length, context_len=1)]
            out.append(sum(ll for ll, _ in self.llm.loglikelihood_tokens(windows, desc="rolling")))
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Requests with the same generation settings are batched together."""
        groups: dict[tuple, list[int]] = {}
        for i, (_, kwargs) in enumerate(r.args for r in requests):
            until = kwargs.get("until") or []
            until = (until,) if isinstance(until, str) else tuple(until)
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
            groups.setdefault((until, temperature, int(kwargs.get("max_gen_toks", self.max_gen_toks))), []).append(i)
        out = [""] * len(requests)
        for (until, temperature, max_new), idx in groups.items():
            texts = self.llm.generate([requests[i].args[0] for i in idx], until=until, temperature=temperature,
                                      max_new_tokens=max_new)
            for i, t in zip(idx, texts):
                out[i] = t
        return out


if __name__ == "__main__":
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
