"""transformers' float32 greedy decoding on minispec's converted folder, 2 threads, 3 runs.

Needs the test extras (torch, transformers). The folder is the one `load_model` converts the
packaged GGUF into: $MINISPEC_CACHE/gemma-3-270m-q4_k_m (default cache ~/.cache/minispec).
"""

import os
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM

cache = Path(os.environ.get("MINISPEC_CACHE", Path.home() / ".cache" / "minispec"))
folder = cache / "gemma-3-270m-q4_k_m"
torch.set_num_threads(2)
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
ids = torch.tensor([np.random.default_rng(1).integers(4, 262144, 256).tolist()])
with torch.inference_mode():
    for _ in range(3):
        out = model(ids, use_cache=True)
        past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        t0 = time.perf_counter()
        for _ in range(47):
            out = model(tok, past_key_values=past, use_cache=True)
            past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        print(f"{47 / (time.perf_counter() - t0):.2f} tokens/s")
