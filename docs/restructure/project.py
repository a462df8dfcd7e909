"""Project the current import graph onto the proposed layout (primary new home per old module),
drop the edges the plan removes, and report cycles at module and package level."""
import os
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import import_graph as g
NEW = {
 "jpeglm": "jpeglm", "jpeglm._io": "_io", "jpeglm.codec": "codec", "jpeglm.grammar": "grammar",
 "jpeglm.tokenizer": "tokenizer.bpe", "jpeglm.tokenizer_formats": "tokenizer.files",
 "jpeglm._bpe_reference": None, "jpeglm._scan_reference": None, "jpeglm.kernels.reference": None,
 "jpeglm.reference": "reference", "jpeglm.reference.jpeg": "reference.jpeg",
 "jpeglm.reference.jpeg_encode": "reference.jpeg_encode", "jpeglm.reference.jpeg_decode": "reference.jpeg_decode",
 "jpeglm.reference.scan": "reference.grammar", "jpeglm.reference.bpe": "reference.bpe",
 "jpeglm.reference.kernels": "reference.kernels", "jpeglm.reference.explain": "reference.explain",
 "jpeglm.sources": "data.sources", "jpeglm.data": "data.prepare", "jpeglm.dataset": "data.dataset",
 "jpeglm.samples": "data.bundled",
 "jpeglm.model": "model.model", "jpeglm.kv_cache": "model.kv_cache", "jpeglm.backends": "model.backends",
 "jpeglm.activation_checkpoint": "model.activation_checkpoint", "jpeglm.dtensor": "model.dtensor",
 "jpeglm.checkpoint_files": "checkpoint.files", "jpeglm.checkpoint": "checkpoint.dcp",
 "jpeglm.dcp_reader": "checkpoint.dcp_reader", "jpeglm.hf": "checkpoint.hf", "jpeglm.loading": "checkpoint.load",
 "jpeglm.sample_options": "inference.settings", "jpeglm.sample": "inference.sample",
 "jpeglm.inference_weights": "inference.weights", "jpeglm.inference": "inference.decode_kernels",
 "jpeglm.train": "train.loop", "jpeglm.train_config": "train.config", "jpeglm.train_data": "train.batches",
 "jpeglm.parallel": "train.parallel", "jpeglm.plan": "train.memory",
 "jpeglm.eval": "eval.metrics", "jpeglm.judge": "eval.judge", "jpeglm.fid": "eval.fid", "jpeglm.video_eval": "eval.video",
 "jpeglm.video": "video.codec",
 "jpeglm.cli": "cli", "jpeglm.commands": "cli.common", "jpeglm.model_commands": "cli.model",
 "jpeglm.video_commands": "cli.video", "jpeglm.demo": "cli.demo", "jpeglm.bench": "cli.bench",
}
# edges the plan removes (old src, old dst): the four circles' closing imports + shims
DROP = {("jpeglm.tokenizer_formats", "jpeglm.tokenizer"),      # formats take cls, import tokenizer.base
        ("jpeglm.model", "jpeglm.hf"),                         # HF out of the model
        ("jpeglm.inference_weights", "jpeglm.model"),          # TYPE_CHECKING import dropped
        ("jpeglm.data", "jpeglm.dataset"),                     # data.__getattr__ removed
        ("jpeglm.checkpoint", "jpeglm.loading")}               # checkpoint.__getattr__ removed
mods, edges = g.build()
adj, pk = {}, {}
for s, es in edges.items():
    if s.startswith("jpeglm.kernels") and s != "jpeglm.kernels.reference":
        continue
    ns = NEW.get(s)
    if ns is None: continue
    for d, k, line, text in es:
        if (s, d) in DROP: continue
        nd = NEW.get(d)
        if nd is None or nd == ns: continue
        adj.setdefault(ns, set()).add(nd)
        ps, pd = ns.split(".")[0], nd.split(".")[0]
        if ps != pd: pk.setdefault(ps, set()).add(pd)
nodes = sorted(set(adj) | {d for v in adj.values() for d in v})
print("module-level cycles after plan:", g.sccs(nodes, adj))
pn = sorted(set(pk) | {d for v in pk.values() for d in v})
print("package-level cycles after plan:", g.sccs(pn, pk))
for p in sorted(pk): print(f"  {p} -> {', '.join(sorted(pk[p]))}")
