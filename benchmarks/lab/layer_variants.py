"""Launch-policy variants on one model layer's attention, then the training step with the fastest.

    python benchmarks/lab/layer_variants.py [--preset enwik8] [--pattern strided] [--step-rows ...]

One layer's attention exactly as the model calls it (``step_attention_profile.layer_call``), forward
+ backward replayed as a CUDA graph, under each :class:`LaunchPolicy` variant below (the tables are
rebuilt per variant; the default runs first and last to show the noise). With ``--step-rows``, the
fastest variant then becomes the process's default policy and ``benchmarks/model.py`` measures
those rows for the preset, so a variant's effect on the whole step is seen in the same call.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

sys.path.append(str(Path(__file__).resolve().parents[2] / "src"))  # PYTHONPATH first (a before/after tree)
sys.path.append(str(Path(__file__).resolve().parents[1]))

import torch
from step_attention_profile import graph_ms, layer_call

from sparse_transformer import kernels
from sparse_transformer.kernels.triton import policy as P
from sparse_transformer.kernels.triton import tables as T


def variants() -> dict:
    base = P.default_policy()

    def configs(**kw):
        c = dict(base.configs)
        c.update({(k.split("_")[0], int(k.split("_")[1])): v for k, v in kw.items()})
        return MappingProxyType(c)

    def steps(v):
        s = dict(base.bwd_steps)
        s[(64, False)] = v
        return MappingProxyType(s)

    def nocap(key):
        return MappingProxyType({k: v for k, v in base.maxnreg.items() if k != key})

    return {
        "default": base,
        "delta pre-pass": replace(base, inline_delta_max_rows=0),
        "bwd short stages 2": replace(base, configs=configs(bwd_64=(4, 2, 2))),
        "fwd short stages 2": replace(base, configs=configs(fwd_64=(4, 3, 2))),
        "bwd steps (64, 64)": replace(base, bwd_steps=steps((64, 64))),
        "bwd steps (32, 32)": replace(base, bwd_steps=steps((32, 32))),
        "bwd no register cap": replace(base, maxnreg=nocap(("bwd", 64))),
        "fwd no register cap": replace(base, maxnreg=nocap(("fwd", 64))),
        "bwd 8 warps": replace(base, configs=configs(bwd_64=(8, 2, 1))),
    }


def use(policy) -> None:
    """Make ``policy`` the default of this process and drop the cached routes (tables rebuilt)."""
    T.default_policy = lambda: policy
    kernels._ROUTES.clear()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="enwik8")
    ap.add_argument("--pattern", default="strided")
    ap.add_argument("--batch", type=int, default=None, help="default: the preset's (enwik8: 16)")
    ap.add_argument("--step-rows", nargs="*", default=[])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "layer": {}, "errors": {}}
    vs = variants()
    order = [*vs, "default"]
    for name in order:
        use(vs[name])
        try:
            run, desc = layer_call(args.preset, args.pattern, args.batch)
            us = [1e3 * graph_ms(run, 50) for _ in range(3)]
        except Exception as e:  # noqa: BLE001  (a variant that does not compile is reported)
            out["errors"][name] = f"{type(e).__name__}: {str(e)[:300]}"
            print(f"{name:24s} error {out['errors'][name]}", flush=True)
            continue
        out["layer"].setdefault(name, []).extend(us)
        out["case"] = desc
        print(f"{name:24s} {min(us):7.1f} us (graph, fwd+bwd; {', '.join(f'{u:.1f}' for u in us)})", flush=True)
        torch.cuda.empty_cache()
    best = min(out["layer"], key=lambda k: min(out["layer"][k]))
    out["best"] = best
    print(f"fastest: {best}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    if args.step_rows:
        import model as M

        use(vs[best])
        M.main(["--presets", args.preset, "--rows", *args.step_rows, "--steps", "5", "--warmup", "2",
                *(["--json", str(args.json.with_suffix(".step.json"))] if args.json else [])])


if __name__ == "__main__":
    main()
