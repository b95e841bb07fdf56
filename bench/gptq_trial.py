"""A faster variant of bench/quant_quality.py for trying GPTQ options: SmolLM2 fake-quantized in memory (float32
activations, no files), perplexity on the same held-out text (context 256, stride 128), and each projection's
relative output error ||ΔW x||² / ||W x||² on the held-out text's own (float model) inputs, saved per trial.

    python bench/gptq_trial.py '{"method": "rtn"}' rtn              # the baseline first (recovery is against it)
    python bench/gptq_trial.py '{"samples": 16, "seq_len": 256}' g16
    python bench/gptq_trial.py '{"samples": 16, "seq_len": 256, "act_order": true, "damp": 0.1}' g16_act
    python bench/gptq_trial.py '{"samples": 16, "seq_len": 256, "awq": true}' awq16

Options: `gptq_codes`' keywords (method, act_order, damp, mse, static_groups, skip: first tokens of each
window left out of the Hessians), samples/seq_len (calibration windows of the corpus' other documents), chars
(held-out characters, default 20000), awq (the AWQ prototype below instead of GPTQ's rounding). Results go to
$GPTQ_TRIAL_CACHE (default: the temporary directory)."""
import copy, json, lzma, sys, tempfile, time, os
from importlib import resources
from pathlib import Path
import torch
import llamalab
from llamalab import assets
from llamalab.perplexity import perplexity
from llamalab.calibrate import calibration_samples, calibration_text
from llamalab.quant import gptq_model
from llamalab.quant.gptq import round_to_nearest
from llamalab.quant.gptq_model import gptq_codes


def awq(self, layer, names, hessian, prefix, out):
    """AWQ (Lin et al. 2023) prototype in place of GPTQ's rounding: per shared-input group, s = rms(x)^alpha
    (alpha 0, .05, ..., .95), W' = Q(W diag(s)) diag(s)^-1 (what folding 1/s into the preceding norm or projection
    gives), the alpha with the least output error tr(ΔW H ΔWᵀ) on the calibration inputs."""
    H = hessian.H
    d = H.diagonal().clamp(min=1e-12).sqrt()
    ws = [layer.get_submodule(n).weight.data.float() for n in names]
    best = None
    for i in range(1 if tuple(names) == ('attention.wo',) else 20):  # GQA: v->o scaling not foldable (AutoAWQ skips it)
        a = i / 20
        s = d ** a
        s = s / (s.max() * s.min()).sqrt()
        deq = [round_to_nearest(w * s, bits=self.options["bits"], group_size=self.options["group_size"],
                                mse=self.options.get("mse", False)).dequantize() / s for w in ws]
        err = sum(float(torch.einsum("oi,ij,oj->", q - w, H, q - w)) for q, w in zip(deq, ws))
        if best is None or err < best[0]:
            best = (err, a, deq)
    for n, q in zip(names, best[2]):
        layer.get_submodule(n).weight.data = q
    out[f"{prefix}.{names[0]}.alpha"] = best[1]



CACHE = Path(os.environ.get("GPTQ_TRIAL_CACHE", tempfile.gettempdir())) / "gptq_trial"
CACHE.mkdir(exist_ok=True)
cfg = json.loads(sys.argv[1]); name = sys.argv[2]
chars = cfg.pop("chars", 20000)
if cfg.pop("awq", False):
    gptq_model._Quantizer.__call__ = awq
torch.set_num_threads(int(os.environ.get("T", "1")))
ckpt = llamalab.load(assets.path("smollm2"))
with lzma.open(resources.files("llamalab.data.corpus") / "prose.jsonl.xz", "rt") as f:
    text = json.loads(f.readline())["text"][:chars]
ids = ckpt.tokenizer.encode(text, bos=ckpt.tokenizer.add_bos)

def ppl(model):
    return perplexity(model, ids, context=256, stride=128, batch_size=4, progress=False).perplexity

base_file = CACHE / f"fp32_{chars}.json"
if not base_file.exists():
    base_file.write_text(json.dumps(ppl(ckpt.model)))
base = json.loads(base_file.read_text())

samples_n, L = cfg.pop("samples", 32), cfg.pop("seq_len", 512)
calib = calibration_text("corpus", chars=samples_n * L * 8)
assert text[:200] not in calib
samples = calibration_samples(ckpt.tokenizer.encode(calib), samples_n, L)
model = copy.deepcopy(ckpt.model)
t0 = time.time()
codes = gptq_codes(model, samples, bits=cfg.pop("bits", 4), group_size=cfg.pop("group_size", 128), progress=False, **cfg)
secs = time.time() - t0
p = ppl(model)
# held-out Hessians of every linear input in the fp32 model (non-overlapping 256 windows)
hfile = CACHE / f"heldout_H_{chars}.pt"
if hfile.exists():
    HH = torch.load(hfile)
else:
    HH, hooks = {}, []
    for n, m in ckpt.model.named_modules():
        if n.startswith("layers.") and isinstance(m, torch.nn.Linear):
            def hook(mod, args, n=n):
                x = args[0].reshape(-1, args[0].shape[-1]).float()
                HH[n] = HH.get(n, 0) + x.t() @ x
            hooks.append(m.register_forward_pre_hook(hook))
    with torch.no_grad():
        t = torch.tensor(ids)
        for b in range(0, len(t) - 256 + 1, 256):
            ckpt.model(t[None, b:b + 256])
    for h in hooks: h.remove()
    torch.save(HH, hfile)

errs = {}
fp = dict(ckpt.model.named_modules())
for n, m in model.named_modules():
    if n in HH:
        W = fp[n].weight.float(); D = m.weight.float() - W; H = HH[n]
        errs[n] = float(torch.einsum("oi,ij,oj->", D, H, D) / torch.einsum("oi,ij,oj->", W, H, W))
(CACHE / f"errs_{name}.json").write_text(json.dumps(errs))
rec = ""
rf = CACHE / f"rtn_{chars}.json"
if name == "rtn": rf.write_text(json.dumps(p))
if rf.exists():
    r = json.loads(rf.read_text()); rec = f"recovery {(r - p) / (r - base):.1%}"
print(f"{name}: fp32 {base:.4f} ppl {p:.4f} (+{p/base-1:.2%}) {rec} mean-err {sum(errs.values())/len(errs):.5f} quant {secs:.0f}s", flush=True)
