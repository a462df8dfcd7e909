"""``jpeglm eval``: held-out bits/byte, decodability and completion PSNR/SSIM with a grid,
``--judge`` (the digit classifier; per class on a class-conditional model) and ``--fid-weights``
(FID). Its parser is made with ``complete``'s by :func:`jpeglm.cli.model.add_parsers` and
completed here (:func:`add_options`); the model options and helpers are
:mod:`jpeglm.cli.model`'s."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jpeglm._io import atomic_write_bytes, record_outputs
from jpeglm.cli import cond_eval
from jpeglm.cli import model as m
from jpeglm.cli import video as video_commands
from jpeglm.cli.common import UserError, existing_files, image_paths

__all__ = ["FID_SAMPLES", "add_options", "cmd_eval"]


def add_options(ev: argparse.ArgumentParser) -> None:
    """``eval``'s own options (``--judge``, ``--cfg``, ``--fid-weights``, ``--fid-samples``)."""
    ev.add_argument("--judge", type=int, default=0, metavar="N",
                    help="also sample N images (N of each class: a class-conditional model) "
                    "and judge them with the digit classifier (32x32 digit models)")  # fmt: skip
    cond_eval.add_options(ev)
    ev.add_argument("--fid-weights", metavar="PATH", default=None,
                    help="also compute FID of --fid-samples unconditional samples against the "
                    "images given, with pytorch-fid's Inception weights from PATH "
                    "(pt_inception-2015-12-05-6726825d.pth, which you download; nothing is "
                    "downloaded here). Needs jpeglm[fid] (torchmetrics)")  # fmt: skip
    ev.add_argument("--fid-samples", type=int, default=None, metavar="N",
                    help="samples for --fid-weights (default 64; at least 2)")  # fmt: skip
    ev.set_defaults(func=cmd_eval)


#: unconditional samples for ``eval --fid-weights`` unless ``--fid-samples`` says otherwise
FID_SAMPLES = 64


def _fid_network(args: argparse.Namespace, n_images: int):
    """``eval --fid-weights``: its options, torchmetrics and the weights file, all checked
    (the network loaded) before the model is read or anything sampled; None without it."""
    if args.fid_weights is None:
        if args.fid_samples is not None:
            raise UserError("--fid-samples needs --fid-weights")
        return None
    if args.fid_samples is None:
        args.fid_samples = FID_SAMPLES
    if args.fid_samples < 2:
        raise UserError(f"--fid-samples must be >= 2 (FID compares covariances), got "
                        f"{args.fid_samples}")  # fmt: skip
    if n_images < 2:
        raise UserError(f"FID needs at least 2 held-out images, got {n_images}")
    try:
        import torchmetrics.image.fid  # noqa: F401
    except ImportError as e:
        raise UserError("--fid-weights needs torchmetrics: pip install 'jpeglm[fid]'") from e
    from jpeglm.eval.fid import FIDInception

    return FIDInception.from_file(args.fid_weights)  # ValueError naming the file: exit 2


def cmd_eval(args: argparse.Namespace) -> int:
    info = m._model_info(args)
    cond_eval.check(args, info)  # args.conditioning, --cfg
    if video_commands.is_video(info):
        if args.fid_weights is not None or args.fid_samples is not None:
            raise UserError("--fid-weights is for image models, not video models")
        clips = existing_files(args.images, "clip")
        folder, tok_path = m._plan_model_outputs(args, ["results.json"], clips)
        loaded = m._load_model(folder, tok_path, args)
        with m._sampling(folder):
            video_commands.evaluate(args, *loaded, info, clips, m._sampling_kwargs(args))
        return 0
    size = args.size if args.size is not None else info.get("image_size")  # before the defaults
    if args.judge and size != 32:
        raise UserError(f"--judge needs a 32x32 digit model (--size 32), not {size}")
    paths = image_paths(args.images)
    cond = args.conditioning  # a class-conditional model: the labels of the images' folders
    labels = None if cond is None else cond_eval.held_out_labels(args.images, paths, cond)
    cond_eval.check_labels(args, labels)
    fid_net = _fid_network(args, len(paths))
    extra = [Path(args.fid_weights)] if fid_net is not None else []
    folder, tok_path = m._plan_model_outputs(args, ["results.json", "grid.png"], [*paths, *extra])
    try:
        with m._sampling(folder):
            return _eval_images(args, folder, tok_path, paths, labels, fid_net)
    finally:  # grid.png is written as soon as the completions are made
        record_outputs([Path(args.out) / "grid.png"])


def _eval_images(args: argparse.Namespace, folder: Path, tok_path: Path, paths: list[Path],
                 labels: list[str] | None, fid_net) -> int:  # noqa: ANN001  # fmt: skip
    from jpeglm import codec
    from jpeglm.eval.metrics import bits_per_byte, evaluate_completion

    model, tok = m._load_model(folder, tok_path, args)
    kw = m._sampling_kwargs(args)
    cond = args.conditioning  # a class-conditional model: FID of its null class
    ckw = {} if cond is None else {"conditioning": cond}
    streams = codec.encode_batch(paths, quality=args.quality, size=args.size)  # once
    res = evaluate_completion(model, tok, paths, args.out, rows=args.rows, streams=streams,
                              write_results=False, **kw, **ckw,
                              **cond_eval.completion_kwargs(args, labels))  # fmt: skip
    if args.fraction is not None:
        res["fraction"] = args.fraction
    if cond is None:
        res["held_out"] = bits_per_byte(model, tok, streams, size=args.size)
    else:  # without the label, and with it where the images' folders name their classes
        res["completion_labels"] = "null" if labels is None else "class folders"
        res.update(cond_eval.held_out(model, tok, streams, args.size, cond, labels))
        if args.judge:  # N of every class, judged as the digit asked for
            res["judge"] = cond_eval.judge(model, tok, cond, args.judge, args.judge_cfg, kw)
    n_fid = args.fid_samples if fid_net is not None else 0
    n_judge = args.judge if cond is None else 0
    if n_judge or n_fid:  # one set of unconditional samples for both
        from jpeglm.inference.sample import generate

        gen = [s.image for s in generate(model, tok, n=max(n_judge, n_fid), **kw, **ckw)]
        if n_judge:  # judged by the digit classifier
            from jpeglm.eval.metrics import judge_digits

            res["judge"] = judge_digits(gen[: args.judge])
        if n_fid:  # against the held-out images as the model sees them (the round trip)
            from jpeglm.eval.fid import fid

            held_out = [codec.decode(s, quality=args.quality) for s in streams]
            dev = "cpu" if args.device.startswith("mps") else args.device  # float64 states
            value = fid(held_out, gen[:n_fid], fid_net, device=dev)
            res["fid"] = {"value": value, "samples": n_fid, "reference_images": len(held_out),
                          "weights": Path(args.fid_weights).name}  # fmt: skip
    text = json.dumps(res, indent=2) + "\n"
    atomic_write_bytes(Path(args.out) / "results.json", text.encode(), record=True)
    print(json.dumps(res, indent=2))
    return 0
