"""Memory of attribution scoring for a model of P parameters: measured on the tiny, default and SmolLM2 models,
whole in memory and with most weights offloaded to disk by a device map (docs/distributed.md).

    python benchmarks/scoring_memory.py [--batch-size 8] [--samples 16] [--json out.json]

Each measurement runs in a fresh process: load the model, score ``--samples`` SST-2 examples (real lengths,
../shared/data when present) and report the anonymous resident memory (RssAnon: what the process really holds;
pages of memory-mapped weight files are page cache) after loading, and its peak above that while scoring (sampled
every 2 ms by a thread). Scoring freezes every weight (``requires_grad=False``) and back-propagates to activations only, so it
allocates no weight gradient; the process checks that no parameter holds a ``.grad`` afterwards.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def child(model: str, offload: float, batch_size: int, samples: int) -> None:
    """Load ``model`` (with ``offload`` > 0: a CPU budget of (1 - offload) of its weights, the rest on disk), score,
    print one JSON line."""
    import torch

    import taskprune as tp
    from taskprune.api import scoring_job
    from taskprune.tasks import Example

    kw = {}
    if offload > 0:
        config_model = tp.load_model(model)
        weight_bytes = sum(p.numel() * p.element_size() for p in config_model.parameters())
        del config_model
        kw = {"device_map": "sequential", "max_memory": {"cpu": int(weight_bytes * (1 - offload))},
              "offload_folder": tempfile.mkdtemp(prefix="taskprune-mem-")}
    m = tp.load_model(model, dtype=torch.float32, **kw)
    tok = tp.load_tokenizer(model)
    task = tp.get_task("sst2")
    if (DATA / "glue").is_dir():
        fit = tp.sample_k_shot(tp.load_examples(task, "fit", str(DATA)), samples, seed=0)
    else:
        fit = [Example("a gripping , beautifully acted film that never lets go", i % 2) for i in range(samples)]
    params = len({id(p): p for p in m.parameters()}) and sum({id(p): p.numel() for p in m.parameters()}.values())
    resident = sum(p.numel() * p.element_size() for p in m.parameters() if p.device.type != "meta")
    base = _rss_kb("RssAnon")
    peak = [base]
    done = threading.Event()

    def sample() -> None:  # anonymous memory only: pages of mmapped weight files are page cache, not a cost
        while not done.is_set():
            peak[0] = max(peak[0], _rss_kb("RssAnon"))
            done.wait(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    tp.score(m, tok, task, fit, batch_size=batch_size)
    done.set()
    sampler.join()
    grads = sum(1 for p in m.parameters() if p.grad is not None)
    job = scoring_job(m, tok, task, fit, batch_size=batch_size)
    widest = max(b.input_ids.numel() for b in job.batches)  # padded tokens of the largest batch
    print(json.dumps({"batch_tokens": widest, "params": params, "resident_weight_mb": resident / 2**20, "base_mb": base / 1024,
                      "peak_above_base_mb": (peak[0] - base) / 1024, "weight_grads": grads, "offloaded": offload}))


def _tiny(folder: Path) -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import tiny_t5, tiny_tokenizer

    tiny_t5().save_pretrained(folder / "tiny-t5")
    tiny_tokenizer().save_pretrained(folder / "tiny-t5")
    return str(folder / "tiny-t5")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--offload", type=float, default=0.7, help="fraction of the weights put on disk (default 0.7)")
    ap.add_argument("--models", nargs="*", default=None, help="only these of: tiny, minilm, smollm2")
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "OFFLOAD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child[0], float(args.child[1]), args.batch_size, args.samples)
    tmp = Path(tempfile.mkdtemp(prefix="taskprune-mem-"))
    models = {"tiny T5 (tests)": "tiny", "minilm-glue6 (default)": str(ROOT / "models" / "minilm-glue6"),
              "SmolLM2-135M": "smollm2-135m-instruct"}
    keys = dict(zip(("tiny", "minilm", "smollm2"), models))
    models = {name: (_tiny(tmp) if path == "tiny" else path) for name, path in models.items()
              if args.models is None or name in {keys[k] for k in args.models}}
    rows = []
    for name, model in models.items():
        for offload in (0.0, args.offload):
            out = subprocess.run([sys.executable, __file__, "--child", model, str(offload), "--batch-size",
                                  str(args.batch_size), "--samples", str(args.samples)],
                                 capture_output=True, text=True, check=False)
            if out.returncode != 0:
                print(f"{name}: failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                continue
            row = {"model": name, **json.loads(out.stdout.strip().splitlines()[-1])}
            rows.append(row)
    print("| model | P | disk offload asked | weights resident, MB | RssAnon after load, MB | largest batch, tokens | "
          "scoring peak above load, MB | weight grads |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['params'] / 1e6:.2f} M | {r['offloaded']:.0%} | {r['resident_weight_mb']:.0f} | "
              f"{r['base_mb']:.0f} | {r['batch_tokens']} | {r['peak_above_base_mb']:.0f} | {r['weight_grads']} |")
    print(f"(batch {args.batch_size}, {args.samples} SST-2 examples, float32)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
