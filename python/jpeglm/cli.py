"""The ``jpeglm`` command line: thin subcommands over the library modules.

User mistakes (bad paths, corrupt files, bad options) print one clear line and exit 2; Ctrl-C
(SIGINT) or SIGTERM prints ``jpeglm <cmd>: interrupted`` and exits 130 / 143, with no
temporary file left. The user's files are safe: every command checks its options, works out
the files it will write and refuses (exit 2) any that would replace one of its inputs, and
creates its output folder and checks it is writable, all before the work starts. Outputs of
inputs with equal names get distinct ones (``x.jlm``, ``x-1.jlm``, ..., in input order).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from jpeglm._io import refuse_overwriting, show, writable_folder


class UserError(Exception):
    """An error caused by the user's input: printed as one line, exit code 2."""


def _atomic_write(path: Path, data: bytes) -> None:
    from jpeglm._io import atomic_write_bytes

    atomic_write_bytes(path, data)


def plan_outputs(
    out: str | os.PathLike, names: Iterable[str], inputs: Iterable[str | os.PathLike] = ()
) -> list[Path]:
    """The files ``out/NAME`` a command will write, checked before any work: the folder is
    created and checked writable, then the command is refused when one of them is one of
    ``inputs`` (after creating: ``-o new/..`` names the folder above only once it exists)."""
    folder = Path(out)
    names = list(names)
    targets = [folder / n for n in names]
    try:
        writable_folder(folder)
        refuse_overwriting(targets, inputs)
    except ValueError as e:
        raise UserError(str(e)) from e
    owned = _owned_outputs(folder)
    for t in targets:
        if (t.exists() or t.is_symlink()) and t.name not in owned:
            raise UserError(
                f"{show(t)} exists and was not written by jpeglm: choose another output folder "
                "(or move it away)"
            )
    if not set(names) <= owned:
        from jpeglm._io import atomic_write_text

        body = "".join(f"{n}\n" for n in sorted(owned | set(names)))
        atomic_write_text(folder / OUTPUTS_MANIFEST, OUTPUTS_HEADER + body)
    return targets


#: in every output folder, the names of the files jpeglm commands wrote there: a rerun may
#: replace those, and nothing else
OUTPUTS_MANIFEST = ".jpeglm-outputs"
OUTPUTS_HEADER = "# files written here by jpeglm commands; a rerun may replace only these\n"


def _owned_outputs(folder: Path) -> set[str]:
    path = folder / OUTPUTS_MANIFEST
    try:
        if path.stat().st_size > 16 << 20:
            raise UserError(f"{show(path)} is too large to be jpeglm's list of outputs")
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return set()
    except OSError as e:
        raise UserError(f"cannot read {show(path)}: {e.strerror}") from e
    return {x for x in text.splitlines() if x and not x.startswith("#")}


def plan_output_file(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """One output file (e.g. ``train-tokenizer -o``), checked like :func:`plan_outputs`."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{show(p)} is a folder: give the file to write")
    return plan_outputs(p.parent, [p.name], inputs)[0]


def distinct_names(paths: Sequence[Path], suffix: str) -> list[str]:
    """``STEM + suffix`` for each path, in order; a name already taken (compared ignoring case,
    for case-insensitive file systems) becomes ``STEM-1``, ``STEM-2``, ... (the first free)."""
    taken: set[str] = set()
    names = []
    for p in paths:
        name, k = p.stem + suffix, 0
        while name.casefold() in taken:
            k += 1
            name = f"{p.stem}-{k}{suffix}"
        taken.add(name.casefold())
        names.append(name)
    return names


# ------------------------------------------------------------------------------------------------
# encode / decode


def _existing_files(items: Sequence[str], what: str) -> list[Path]:
    paths = [Path(x) for x in items]
    for p in paths:
        if not p.is_file():
            raise UserError(f"no such {what}: {show(p)}")
    return paths


_QUALITY_NAME = re.compile(r"\.q(\d{1,3})\.jlm$", re.IGNORECASE)


def stream_suffix(quality: int) -> str:
    """The file suffix of a stripped stream: ``.jlm`` at the default quality 25, else
    ``.qNN.jlm`` -- the stream's bytes stay canonical, its name carries the tables it needs."""
    return ".jlm" if quality == 25 else f".q{quality}.jlm"


def stream_quality(path: Path, given: int | None) -> int:
    """The quality of a stream file: from its name (``x.q90.jlm``), else ``given``, else 25;
    a name and a ``--quality`` that disagree are refused (wrong tables decode to false
    colours without any error)."""
    m = _QUALITY_NAME.search(path.name)
    named = int(m.group(1)) if m else None
    if named is not None and given is not None and named != given:
        raise UserError(f"{show(path)} is a quality-{named} stream (its name says so) but "
                        f"--quality {given} was given")  # fmt: skip
    if named is not None:
        return named
    return 25 if given is None else given


def _stem(path: Path) -> str:
    m = _QUALITY_NAME.search(path.name)
    return path.name[: m.start()] if m else path.stem


def _check_codec_options(args: argparse.Namespace) -> None:
    from jpeglm import codec

    try:
        if getattr(args, "size", None) is not None:
            codec._check_size(args.size)
        codec._check_quality(args.quality)
    except ValueError as e:
        raise UserError(str(e)) from e


def cmd_encode(args: argparse.Namespace) -> int:
    from jpeglm import codec

    _check_codec_options(args)
    paths = _image_paths(args.images)
    suffix = ".jpg" if args.full else stream_suffix(args.quality)
    targets = plan_outputs(args.out, distinct_names(paths, suffix), paths)
    for p, dst in zip(paths, targets):
        try:
            data = codec.encode(p, quality=args.quality, size=args.size)
        except ValueError as e:
            raise UserError(f"{show(p)}: {e}") from e
        if args.full:
            data = codec.with_tables(data, args.quality)
        _atomic_write(dst, data)
        print(f"{show(p)} -> {show(dst)} ({len(data)} bytes)")
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    import io

    from PIL import Image

    from jpeglm import codec

    paths = _existing_files(args.streams, "file")
    qualities = [stream_quality(p, args.quality) for p in paths]
    _check_codec_options(argparse.Namespace(quality=qualities[0] if qualities else 25))
    names = distinct_names([Path(_stem(p) + ".jlm") for p in paths], ".png")
    targets = plan_outputs(args.out, names, paths)
    for p, dst, q in zip(paths, targets, qualities):
        args.quality = q
        data = p.read_bytes()
        if args.tolerant:
            r = codec.decode(data, tolerant=True, quality=args.quality)
            img, note = r.image, f"{r.valid_mcus}/{r.total_mcus} MCUs valid"
        else:
            try:
                img = codec.decode(data, quality=args.quality)
            except codec.JPEGError as e:
                raise UserError(f"{show(p)}: {e} (use --tolerant to decode what is valid)") from e
            note = "clean"
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "PNG")
        _atomic_write(dst, buf.getvalue())
        print(f"{show(p)} -> {show(dst)} ({img.shape[1]}x{img.shape[0]}, {note})")
    return 0


# ------------------------------------------------------------------------------------------------
# demo


def _label(img: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    im = Image.fromarray(img)
    d = ImageDraw.Draw(im)
    d.rectangle((0, 0, 8 + 6 * len(text), 14), fill=(0, 0, 0))
    d.text((4, 2), text, fill=(255, 255, 255))
    return np.asarray(im)


def cmd_demo(args: argparse.Namespace) -> int:
    """Encode the bundled photos canonically, decode them back, show and measure it."""
    import io

    from PIL import Image

    from jpeglm import codec, samples

    _check_codec_options(args)
    _check_temperature(args.temperature)
    if args.samples < 1:
        raise UserError(f"--samples must be >= 1, got {args.samples}")
    names = list(samples.PHOTOS)
    model_files = [] if args.codec_only else ["samples_grid.png", "report.json"]
    inputs = [samples.photo_path(n) for n in names]
    if DEMO_CHECKPOINT.is_dir():
        inputs += list(DEMO_CHECKPOINT.iterdir())
    plan_outputs(args.out, [f"{n}.jpg" for n in names] + ["side_by_side.png", *model_files], inputs)
    out = Path(args.out)
    q, size = args.quality, args.size

    t0 = time.perf_counter()
    prepared = [codec.prepare(samples.photo_path(n), size) for n in names]
    t_prep = time.perf_counter() - t0

    t0 = time.perf_counter()
    streams = [codec.encode(a, quality=q, size=size) for a in prepared]
    t_enc1 = time.perf_counter() - t0
    t0 = time.perf_counter()
    batch = codec.encode_batch(np.stack(prepared), quality=q, size=size)
    t_encb = time.perf_counter() - t0
    assert batch == streams

    t0 = time.perf_counter()
    decoded = [codec.decode(s, quality=q) for s in streams]
    t_dec = time.perf_counter() - t0

    # A damaged generation: each stream cut at 60% still gives a picture (grey where missing).
    cut = [
        codec.decode(s[: int(len(s) * 0.6)], tolerant=True, quality=q, size=size) for s in streams
    ]

    print(f"jpeglm demo: {len(names)} bundled photos -> canonical {size}x{size} JPEG, quality {q}")
    print(f"{'image':<18} {'stripped':>9} {'with tables':>12} {'PSNR':>7}  cut at 60%")
    for n, a, s, d, c in zip(names, prepared, streams, decoded, cut):
        mse = float(np.mean((a.astype(np.float64) - d) ** 2))
        psnr = 10 * np.log10(255**2 / mse) if mse else float("inf")
        print(
            f"{n:<18} {len(s):>8}B {len(codec.with_tables(s, q)):>11}B {psnr:>6.2f}dB"
            f"  {c.valid_mcus}/{c.total_mcus} MCUs valid"
        )
        _atomic_write(out / f"{n}.jpg", codec.with_tables(s, q))
    n_img = len(names)
    print(
        f"timings: prepare {t_prep / n_img * 1e3:.2f} ms/img, "
        f"encode {t_enc1 / n_img * 1e6:.0f} us/img "
        f"(batch, all cores: {t_encb / n_img * 1e6:.0f} us/img), "
        f"decode {t_dec / n_img * 1e6:.0f} us/img"
    )
    rows = [
        np.concatenate(
            [_label(a, "original"), _label(d, f"q{q}: {len(s)} B"), _label(c.image, "cut 60%")],
            axis=1,
        )
        for a, d, s, c in zip(prepared, decoded, streams, cut)
    ]
    grid = np.concatenate(rows, axis=0)
    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, "PNG")
    _atomic_write(out / "side_by_side.png", buf.getvalue())
    print(f"wrote {out / 'side_by_side.png'} and {n_img} complete JPEG files in {out}/")
    if not args.codec_only:
        _demo_model(out, args)
    return 0


DEMO_CHECKPOINT = Path(__file__).parent / "data" / "checkpoints" / "mnist32"


def _demo_model(out: Path, args: argparse.Namespace) -> None:
    """Sample and complete digits with the shipped JPEG-LM (trained by our own trainer on the
    bundled MNIST digits, see scripts/train_demo_checkpoint.sh)."""
    import io
    import json

    from PIL import Image

    try:
        import torch
    except ImportError:
        print("(torch is not installed: skipping the model part of the demo)")
        return
    if not (DEMO_CHECKPOINT / "config.json").is_file():
        print(f"(no demo checkpoint in {DEMO_CHECKPOINT}: skipping the model part)")
        return
    from jpeglm import codec, samples
    from jpeglm.eval import bits_per_byte, completion_scores, image_grid
    from jpeglm.model import Transformer
    from jpeglm.sample import complete, generate
    from jpeglm.tokenizer import Tokenizer

    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    model = Transformer.from_pretrained(DEMO_CHECKPOINT, dtype=torch.float32).eval()
    tok = Tokenizer.load(DEMO_CHECKPOINT / "tokenizer.jpeglm")
    size, n = 32, args.samples
    # A 0.9M-parameter model trained for minutes: sample conservatively (the paper's settings,
    # temperature 1 / top-k 50 / top-p 0.9, are for a 7B model; pass --temperature to change).
    kw = dict(size=size, temperature=args.temperature, top_k=8, top_p=0.9, max_tokens=600,
              seed=args.seed)  # fmt: skip
    gen = generate(model, tok, n=n, **kw)
    gen_u = generate(model, tok, n=n, constrained=False, **kw)
    digits, _ = samples.mnist()
    held = [d for d in digits[4500 : 4500 + n]]  # the held-out digits (not trained on)
    comp = complete(model, tok, held, rows=1, **kw)
    originals = [codec.decode(codec.encode(d, size=size)) for d in held]
    streams = [codec.encode(d, size=size) for d in digits[4500:4600]]
    bpb = bits_per_byte(model, tok, streams, size=size)
    bpb_c = bits_per_byte(model, tok, streams, constrained=True, size=size)
    scores = completion_scores(originals, [c.image for c in comp], rows=1)
    dt = time.perf_counter() - t0

    def big(img):  # 32x32 is tiny on screen: show 3x
        return np.repeat(np.repeat(img, 3, axis=0), 3, axis=1)

    k = min(8, n)
    prompts = [o.copy() for o in originals]
    for p in prompts:
        p[16:] = 128
    rows = [
        [big(s.image) for s in gen[:k]],
        [big(s.image) for s in gen_u[:k]],
        [big(p) for p in prompts[:k]],
        [big(c.image) for c in comp[:k]],
        [big(o) for o in originals[:k]],
    ]
    grid = image_grid(rows)
    # row labels on the left
    from PIL import ImageDraw

    labels = ["samples (constrained)", "samples (unconstrained)", "prompts (1 MCU row)",
              "completions", "originals"]  # fmt: skip
    canvas = Image.new("RGB", (grid.shape[1] + 150, grid.shape[0]), "white")
    canvas.paste(Image.fromarray(grid), (150, 0))
    d = ImageDraw.Draw(canvas)
    for r, text in enumerate(labels):
        d.text((4, r * (grid.shape[0] // len(labels)) + 40), text, fill=(0, 0, 0))
    buf = io.BytesIO()
    canvas.save(buf, "PNG")
    _atomic_write(out / "samples_grid.png", buf.getvalue())
    report = {
        "checkpoint": str(DEMO_CHECKPOINT),
        "parameters": model.num_params(),
        "samples": n,
        "decodable_constrained": sum(s.clean for s in gen) / n,
        "decodable_unconstrained": sum(s.clean for s in gen_u) / n,
        "held_out_bits_per_byte": bpb["bits_per_byte"],
        "held_out_bits_per_byte_constrained": bpb_c["bits_per_byte"],
        "completion": scores,
        "seconds": dt,
    }
    _atomic_write(out / "report.json", (json.dumps(report, indent=2) + "\n").encode())
    print(
        f"JPEG-LM demo model ({model.num_params() / 1e6:.1f}M parameters, 32x32 MNIST digits):\n"
        f"  decodable samples: {report['decodable_constrained']:.0%} constrained, "
        f"{report['decodable_unconstrained']:.0%} unconstrained (same seeds)\n"
        f"  held-out bits/byte: {bpb['bits_per_byte']:.3f} "
        f"(constrained {bpb_c['bits_per_byte']:.3f})\n"
        f"  completion of the lower half: PSNR {scores['psnr']:.2f} dB, SSIM {scores['ssim']:.3f} "
        f"(repeat-last-row baseline: {scores['baseline_psnr']:.2f} dB, "
        f"{scores['baseline_ssim']:.3f})\n"
        f"wrote {out / 'samples_grid.png'} and {out / 'report.json'} ({dt:.1f} s)"
    )


# ------------------------------------------------------------------------------------------------
# tokenizer


def _load_tokenizer(path: Path):
    from jpeglm.tokenizer import load_file

    if not path.is_file():
        raise UserError(f"no such tokenizer file: {show(path)}")
    try:
        return load_file(path)  # jpeglm's format, or the official sentencepiece .model
    except ValueError as e:
        raise UserError(f"{show(path)}: {e}") from e


def cmd_train_tokenizer(args: argparse.Namespace) -> int:
    from jpeglm import codec, data
    from jpeglm.tokenizer import Tokenizer

    _check_codec_options(args)
    paths = _image_paths(args.images)
    dst = plan_output_file(args.out, paths)
    kept, images, skipped = data.load_images(paths, size=args.size)  # unreadable ones skipped
    for rec in skipped:
        print(f"skipped {rec['source']}: {rec['error']}", file=sys.stderr)
    if not kept:
        raise UserError(f"none of the {len(paths)} images could be read")
    streams = codec.encode_batch(images, quality=args.quality, size=args.size)
    tok = Tokenizer.train(streams, vocab_size=args.vocab_size, progress=not args.quiet)
    tok.save(dst)
    print(f"trained on {len(streams)} images ({len(skipped)} skipped) -> {show(dst)} "
          f"(vocab {tok.vocab_size})")  # fmt: skip
    return 0


def cmd_tokenize(args: argparse.Namespace) -> int:
    from jpeglm import codec

    _check_codec_options(args)
    tok = _load_tokenizer(Path(args.tokenizer))
    for src in _image_paths(args.images):
        try:
            stream = codec.encode(src, quality=args.quality, size=args.size)
        except ValueError as e:
            raise UserError(f"{show(src)}: {e}") from e
        ids = tok.encode(stream)
        print(f"{show(src)}: {len(stream)} bytes -> {len(ids)} tokens")
        if args.ids:
            print(" ".join(map(str, ids)))
    return 0


def _image_paths(items: Sequence[str]) -> list[Path]:
    """The images the arguments name (files, and folders searched recursively): the one
    lister of :func:`jpeglm.data.list_images`, shared with prepare. A missing path, a named
    file that is not an image, or a folder without images is one line and exit 2."""
    from jpeglm import data

    paths, problems = data.list_images(items)
    if problems:
        p = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(f"{p['source']}: {p['error']}{more}")
    if not paths:
        raise UserError("no images found")
    return paths


# ------------------------------------------------------------------------------------------------
# model: sample / complete / eval


def _check_temperature(t: float) -> None:
    if not (math.isfinite(t) and t >= 0):
        raise UserError(f"--temperature must be a finite number >= 0 (0: greedy), got {t}")


def _check_device(name: str) -> None:
    """``--device`` names a device this machine has (checked before loading any model)."""
    try:
        import torch
    except ImportError as e:
        raise UserError("sampling needs torch: pip install 'jpeglm[train]'") from e
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError) as e:
        raise UserError(f"--device {name!r} is not a device (cpu, cuda, cuda:N, mps)") from e
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= n:
            have = f"{n} CUDA device(s): cuda:0..cuda:{n - 1}" if n else "no CUDA device"
            raise UserError(f"--device {name}: no such GPU (this machine has {have})")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise UserError(f"--device {name}: MPS is not available on this machine")
    elif dev.type != "cpu":
        raise UserError(f"--device {name}: unsupported device type (cpu, cuda, cuda:N, mps)")


def _check_sampling(args: argparse.Namespace) -> None:
    """The sampling options given, all checked before any model is read (options left to the
    model's defaults are checked again once those are filled in)."""
    from jpeglm import codec

    try:
        if args.size is not None:
            codec._check_size(args.size)
        if getattr(args, "quality", None) is not None:
            codec._check_quality(args.quality)
    except ValueError as e:
        raise UserError(str(e)) from e
    if args.temperature is not None:
        _check_temperature(args.temperature)
    if args.top_p is not None and not (math.isfinite(args.top_p) and 0 < args.top_p <= 1):
        raise UserError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.top_k is not None and args.top_k < 0:
        raise UserError(f"--top-k must be >= 0 (0: no top-k), got {args.top_k}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise UserError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    if getattr(args, "n", 1) < 1:
        raise UserError(f"-n must be >= 1, got {args.n}")
    rows = getattr(args, "rows", None)
    if rows is not None and args.size is not None and not 0 <= rows < args.size // 16:
        raise UserError(f"--rows must be in 0..{args.size // 16 - 1} for --size {args.size}")
    _check_device(args.device)


def _model_files(args: argparse.Namespace) -> tuple[Path, Path, dict]:
    """The model folder ``--model`` names (an HF folder, a trainer checkpoint step_N, or a run
    folder: its final/ export, else its newest checkpoint), its tokenizer file (``--tokenizer``,
    else tokenizer.jpeglm or the official sentencepiece tokenizer.model inside) and what it
    says about its images (jpeglm.json; the paper's 256 px / q25 for folders without one)."""
    from jpeglm import checkpoint

    try:
        kind, folder = checkpoint.resolve_model(args.model)
        state = checkpoint.read_train_state(folder) if kind == "dcp" else None
        info = checkpoint.read_info(folder, state)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from e
    if args.tokenizer:
        return folder, Path(args.tokenizer), info
    tok = checkpoint.find_tokenizer(folder)
    if tok is None:
        raise UserError(f"no tokenizer in {show(folder)}: pass --tokenizer")
    return folder, tok, info


def _apply_model_defaults(args: argparse.Namespace, info: dict) -> None:
    """Options not given on the command line come from the model's own record."""
    if args.size is None:
        args.size = int(info["image_size"])
    if args.quality is None:
        args.quality = int(info["quality"])
    rec = info.get("sampling") or {}
    for opt, key, fallback in (("temperature", "temperature", 1.0), ("top_k", "top_k", 50),
                               ("top_p", "top_p", 0.9)):  # fmt: skip
        if getattr(args, opt) is None:
            setattr(args, opt, rec.get(key, fallback))


def _plan_model_outputs(
    args: argparse.Namespace, names: Iterable[str], images: Sequence[Path] = ()
) -> tuple[Path, Path]:
    """Model files, options (defaults from the model), and outputs checked (in that order)
    before the model is loaded."""
    _check_sampling(args)
    folder, tok_path, info = _model_files(args)
    _apply_model_defaults(args, info)
    _check_sampling(args)
    inputs = [tok_path, *images, *(p for p in folder.iterdir() if p.is_file())]
    plan_outputs(args.out, names, inputs)
    return folder, tok_path


def _load_model(folder: Path, tok_path: Path, args: argparse.Namespace):
    """The model and tokenizer; an image size whose streams cannot fit its context is
    refused before any sampling."""
    from jpeglm import checkpoint

    try:
        loaded = checkpoint.load_model(folder, device=args.device, tokenizer=tok_path)
        checkpoint.check_context(loaded, args.size, args.quality)
    except (ValueError, OSError) as e:
        raise UserError(f"{show(folder)}: {e}") from e
    return loaded.model, loaded.tokenizer


def _sample_stems(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(n)]


def _files_of(stems: Sequence[str]) -> list[str]:
    return [stem + ext for stem in stems for ext in (".png", ".jpg")]


def _write_samples(out: Path, samples_, stems: Sequence[str], quality: int) -> None:
    """``STEM.png`` (the tolerant decode) and ``STEM.jpg`` (the stream with tables) each."""
    import io

    from PIL import Image

    from jpeglm import codec

    for stem, s in zip(stems, samples_):
        buf = io.BytesIO()
        Image.fromarray(s.image).save(buf, "PNG")
        _atomic_write(out / f"{stem}.png", buf.getvalue())
        if s.data:
            _atomic_write(out / f"{stem}.jpg", codec.with_tables(s.data, quality))
        state = "clean" if s.clean else f"{s.valid_mcus}/{s.total_mcus} MCUs valid"
        print(f"{show(out / f'{stem}.png')}: {len(s.data)} bytes, {state}")


def _sampling_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        size=args.size,
        quality=args.quality,
        temperature=args.temperature,
        top_k=args.top_k or None,
        top_p=args.top_p,
        max_tokens=args.max_tokens,
        seed=args.seed,
        batch_size=args.batch_size,
        constrained=not args.unconstrained,
        compile=args.compile,
        dtype=args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32"),
    )


def cmd_sample(args: argparse.Namespace) -> int:
    from jpeglm.sample import generate

    stems = _sample_stems("sample_", max(args.n, 0))
    folder, tok_path = _plan_model_outputs(args, _files_of(stems))
    model, tok = _load_model(folder, tok_path, args)
    out = generate(model, tok, n=args.n, **_sampling_kwargs(args))
    _write_samples(Path(args.out), out, stems, args.quality)
    return 0


def cmd_complete(args: argparse.Namespace) -> int:
    """Completions named after their inputs: ``photo.jpg`` -> ``photo.png`` + ``photo.jpg``
    (equal names numbered as everywhere: ``photo-1.png``)."""
    from jpeglm.sample import complete

    images = _image_paths(args.images)
    stems = [n.removesuffix(".png") for n in distinct_names(images, ".png")]
    folder, tok_path = _plan_model_outputs(args, _files_of(stems), images)
    model, tok = _load_model(folder, tok_path, args)
    out = complete(model, tok, images, rows=args.rows, **_sampling_kwargs(args))
    _write_samples(Path(args.out), out, stems, args.quality)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from jpeglm import codec
    from jpeglm.eval import bits_per_byte, evaluate_completion

    paths = _image_paths(args.images)
    folder, tok_path = _plan_model_outputs(args, ["results.json", "grid.png"], paths)
    model, tok = _load_model(folder, tok_path, args)
    kw = _sampling_kwargs(args)
    streams = codec.encode_batch(paths, quality=args.quality, size=args.size)  # once
    res = evaluate_completion(model, tok, paths, args.out, rows=args.rows, streams=streams,
                              write_results=False, **kw)  # fmt: skip
    res["held_out"] = bits_per_byte(model, tok, streams, size=args.size)
    _atomic_write(Path(args.out) / "results.json", (json.dumps(res, indent=2) + "\n").encode())
    print(json.dumps(res, indent=2))
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from jpeglm import data

    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    tok = _load_tokenizer(Path(args.tokenizer))
    video = None
    if args.video:
        m = re.fullmatch(r"(\d+)x(\d+)", args.frame_size or "256x144")
        if not m:
            raise UserError(f"--frame-size must be WIDTHxHEIGHT, got {args.frame_size!r}")
        video = {"width": int(m.group(1)), "height": int(m.group(2)), "fps": args.fps,
                 "seconds": args.seconds, "qp": args.qp}  # fmt: skip
    try:
        index = data.prepare(
            args.src, args.out, tok, size=args.size, quality=args.quality, seq_len=args.seq_len,
            images_per_shard=args.images_per_shard, workers=args.workers, fast=args.fast,
            progress=not args.quiet, video=video,
        )  # fmt: skip
    except FileNotFoundError as e:
        raise UserError(str(e)) from e
    print(
        f"{index['images']} images -> {index['sequences']} sequences of {args.seq_len} tokens "
        f"in {sum(1 for s in index['shards'] if s['sequences'])} shards "
        f"({len(index['skipped'])} skipped, see report.json)"
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from jpeglm.train import main as train_main

    return train_main(list(args.args))


def cmd_export(args: argparse.Namespace) -> int:
    """A trainer checkpoint (DCP, any number of ranks) -> an HF folder with the tokenizer."""
    try:
        import torch
    except ImportError as e:
        raise UserError("export needs torch: pip install 'jpeglm[train]'") from e
    from jpeglm import checkpoint

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if args.max_shard_size <= 0:
        raise UserError("--max-shard-size must be positive")
    dest = checkpoint.export(args.checkpoint, args.out, dtype=dtypes[args.dtype],
                             max_shard_size=args.max_shard_size)  # fmt: skip
    print(f"{dest}: HF folder (config.json, safetensors, tokenizer, jpeglm.json)")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from jpeglm.plan import report

    try:
        print(report(args))
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from e
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """A quick, installed-package check of the headline speeds against the peers present
    (the full harnesses with RESULTS.md are in the repository's benchmarks/)."""
    import io

    from PIL import Image

    from jpeglm import codec, samples
    from jpeglm.tokenizer import Tokenizer

    imgs = [codec.prepare(c) for c in samples.random_crops(args.images, flip=True)]
    pil = [Image.fromarray(a) for a in imgs]
    streams = codec.encode_batch(imgs)
    full = [codec.with_tables(x) for x in streams]

    def rate(fn, n: int) -> float:
        fn()
        best = 0.0
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            best = max(best, n / (time.perf_counter() - t0))
        return best

    def pil_enc() -> None:
        for im in pil:
            im.save(io.BytesIO(), "JPEG", quality=25, subsampling="4:2:0", streamtype=2,
                    restart_marker_blocks=1)  # fmt: skip

    n = len(imgs)
    rows = [
        ("encode", "Pillow", rate(pil_enc, n)),
        ("encode", "jpeglm (1 thread)", rate(lambda: [codec.encode(a) for a in imgs], n)),
        ("encode", "jpeglm batch (all cores)", rate(lambda: codec.encode_batch(np.stack(imgs)), n)),
        ("decode", "Pillow",
         rate(lambda: [np.asarray(Image.open(io.BytesIO(f)).convert("RGB")) for f in full], n)),
        ("decode", "jpeglm (1 thread)", rate(lambda: [codec.decode(x) for x in streams], n)),
        ("decode", "jpeglm batch (all cores)", rate(lambda: codec.decode_batch(streams), n)),
    ]  # fmt: skip
    tok = Tokenizer.train(streams, vocab_size=320, progress=False)
    mb = sum(map(len, streams)) / 1e6
    rows.append(("tokenize MB/s", "jpeglm", rate(lambda: [tok.encode(x) for x in streams], mb)))
    try:
        import tiktoken

        enc = tiktoken.Encoding("j", pat_str=r"[\s\S]+", mergeable_ranks=tok.mergeable_ranks,
                                special_tokens={})  # fmt: skip
        rows.append(("tokenize MB/s", "tiktoken",
                     rate(lambda: [enc._encode_bytes(x) for x in streams], mb)))  # fmt: skip
    except ImportError:
        pass
    print(f"{'task':<14} {'implementation':<26} {'rate':>10}  (images/s unless noted)")
    for task, name, r in rows:
        print(f"{task:<14} {name:<26} {r:>10,.1f}")
    return 0


# what jpeglm.reference.explain writes
EXPLAIN_FILES = [f"{i}_{n}.png" for i, n in enumerate(
    ["planes", "dct_basis", "block", "zigzag", "mcu_bytes", "mcu_cost", "decoded"], 1
)] + ["explain.md"]  # fmt: skip


def cmd_explain(args: argparse.Namespace) -> int:
    from jpeglm.reference.explain import explain

    _check_codec_options(args)
    (src,) = _existing_files([args.image], "image file")
    plan_outputs(args.out, EXPLAIN_FILES, [src])
    page = explain(src, args.out, quality=args.quality, size=args.size)
    print(f"wrote {show(page)} and its pictures")
    return 0


# ------------------------------------------------------------------------------------------------


OUT_HELP = (
    "output folder (an output that would replace an input is refused; inputs with equal names "
    "give NAME, NAME-1, NAME-2, ... in input order)"
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jpeglm", description="JPEG-LM toolkit: canonical JPEG codec, tokenizer, model.",
        epilog="Outputs never replace inputs: a command that would is refused before it starts "
        "(exit 2). Inputs with equal names (a/x.jpg b/x.png) give x.jlm, x-1.jlm, ... in input "
        "order. Rerunning into an output folder replaces only the files the command writes.",
    )  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser(
        "encode", help="images -> canonical stripped streams (.jlm) or complete JPEGs"
    )
    e.add_argument("images", nargs="+")
    e.add_argument("-o", "--out", required=True, help=OUT_HELP)
    e.add_argument("--quality", type=int, default=25)
    e.add_argument("--size", type=int, default=256)
    e.add_argument("--full", action="store_true", help="write complete JFIF files (tables spliced)")
    e.epilog = ("Stripped streams are named NAME.jlm at quality 25 and NAME.qQ.jlm otherwise, so "
                "that decode splices the right tables.")  # fmt: skip
    e.set_defaults(func=cmd_encode)

    d = sub.add_parser("decode", help="streams (stripped or complete) -> PNG")
    d.add_argument("streams", nargs="+")
    d.add_argument("-o", "--out", required=True, help=OUT_HELP)
    d.add_argument("--quality", type=int, default=None,
                   help="quality of the tables to splice (default: from the name, x.q90.jlm, "
                   "else 25)")  # fmt: skip
    d.add_argument("--tolerant", action="store_true", help="decode what is valid, grey elsewhere")
    d.set_defaults(func=cmd_decode)

    b = sub.add_parser("bench", help="quick codec / tokenizer speed check against the peers")
    b.add_argument("--images", type=int, default=64)
    b.set_defaults(func=cmd_bench)

    x = sub.add_parser("explain", help="pictures of every JPEG step for one image + a page")
    x.add_argument("image")
    x.add_argument("-o", "--out", required=True, help="output folder")
    x.add_argument("--quality", type=int, default=25)
    x.add_argument("--size", type=int, default=256)
    x.set_defaults(func=cmd_explain)

    t = sub.add_parser("train-tokenizer", help="train a byte-level BPE on canonical streams")
    t.add_argument("images", nargs="+", help="image files or folders")
    t.add_argument("-o", "--out", required=True, help="tokenizer file to write")
    t.add_argument("--vocab-size", type=int, default=320)
    t.add_argument("--quality", type=int, default=25)
    t.add_argument("--size", type=int, default=256)
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train_tokenizer)

    k = sub.add_parser("tokenize", help="images -> canonical streams -> token counts (and ids)")
    k.add_argument("images", nargs="+")
    k.add_argument("--tokenizer", required=True)
    k.add_argument("--quality", type=int, default=25)
    k.add_argument("--size", type=int, default=256)
    k.add_argument("--ids", action="store_true", help="print the token ids")
    k.set_defaults(func=cmd_tokenize)

    pr = sub.add_parser("prepare", help="images -> packed uint16 token shards (resumable)")
    pr.add_argument("src", help="image folder, .txt list of paths, or tar archive")
    pr.add_argument("out", help="output folder")
    pr.add_argument("--tokenizer", required=True)
    pr.add_argument("--size", type=int, default=256)
    pr.add_argument("--quality", type=int, default=25)
    pr.add_argument("--seq-len", type=int, default=12288)
    pr.add_argument("--images-per-shard", type=int, default=1024)
    pr.add_argument("--workers", type=int, default=None)
    pr.add_argument("--fast", action="store_true", help="libjpeg DCT scaling for big JPEGs")
    pr.add_argument("--video", action="store_true",
                    help="AVC-LM: SRC holds clips (video files or .npy frames) made canonical "
                    "H.264 streams (jpeglm.video)")  # fmt: skip
    pr.add_argument("--frame-size", default=None, help="video: WIDTHxHEIGHT (default 256x144)")
    pr.add_argument("--fps", type=float, default=3, help="video: frames per second (3)")
    pr.add_argument("--seconds", type=float, default=5, help="video: seconds kept (5)")
    pr.add_argument("--qp", type=int, default=37, help="video: libx264 constant QP (37)")
    pr.add_argument("--quiet", action="store_true")
    pr.set_defaults(func=cmd_prepare)

    tr = sub.add_parser(
        "train", add_help=False,
        help="train a model: CONFIG.toml [key=value ...] (--help lists every key; "
        "--print-config writes a complete default config)",
    )  # fmt: skip
    tr.add_argument("args", nargs=argparse.REMAINDER, help="CONFIG.toml and/or key=value")
    tr.set_defaults(func=cmd_train)

    pl = sub.add_parser("plan", help="per-GPU training memory: DDP / FSDP x checkpointing")
    from jpeglm.plan import add_arguments as plan_arguments

    plan_arguments(pl)
    pl.set_defaults(func=cmd_plan)

    ex = sub.add_parser("export", help="trainer checkpoint (step_N or run folder) -> HF folder")
    ex.add_argument("checkpoint", help="OUT/step_N, or a run folder (its newest checkpoint)")
    ex.add_argument("out", help="new folder for the HF checkpoint (must not exist)")
    ex.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    ex.add_argument("--max-shard-size", type=int, default=5 * 2**30, help="bytes per file")
    ex.set_defaults(func=cmd_export)

    def sampling(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--model", required=True,
                        help="HF folder, trainer checkpoint (step_N) or run folder")  # fmt: skip
        sp.add_argument("--tokenizer", help="tokenizer file (default: inside --model)")
        sp.add_argument("-o", "--out", required=True, help="output folder")
        sp.add_argument("--size", type=int, default=None, help="default: the model's image size")
        sp.add_argument("--quality", type=int, default=None, help="default: the model's")
        sp.add_argument("--temperature", type=float, default=None, help="default: the model's")
        sp.add_argument("--top-k", type=int, default=None, help="default: the model's (0: off)")
        sp.add_argument("--top-p", type=float, default=None, help="default: the model's")
        sp.add_argument("--max-tokens", type=int, default=None)
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--batch-size", type=int, default=None)
        sp.add_argument("--unconstrained", action="store_true", help="no grammar mask")
        sp.add_argument("--device", default="cpu")
        sp.add_argument("--compile", action="store_true", help="torch.compile the decode step")
        sp.add_argument("--dtype", choices=["fp32", "bf16", "fp16", "int8"], default=None,
                        help="sampling weights (default: fp32 on CPU, bf16 on GPU; int8: "
                        "weight-only, one scale per output channel)")  # fmt: skip

    sa = sub.add_parser("sample", help="unconditional samples from a model")
    sampling(sa)
    sa.add_argument("-n", type=int, default=4)
    sa.set_defaults(func=cmd_sample)

    co = sub.add_parser("complete", help="complete images from their first rows of MCUs")
    sampling(co)
    co.add_argument("images", nargs="+")
    co.add_argument("--rows", type=int, default=8)
    co.set_defaults(func=cmd_complete)

    ev = sub.add_parser("eval", help="bits/byte, decodability, completion PSNR/SSIM, grid")
    sampling(ev)
    ev.add_argument("images", nargs="+")
    ev.add_argument("--rows", type=int, default=8)
    ev.set_defaults(func=cmd_eval)

    m = sub.add_parser("demo", help="encode + decode the bundled photos; side-by-side PNG")
    m.add_argument("--out", default="demo_out")
    m.add_argument("--quality", type=int, default=25)
    m.add_argument("--size", type=int, default=256)
    m.add_argument("--samples", type=int, default=16, help="model samples and completions")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--temperature", type=float, default=0.4, help="model sampling temperature")
    m.add_argument("--codec-only", action="store_true", help="skip the model part")
    m.set_defaults(func=cmd_demo)
    return p


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt (so temp files are removed)."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated


def _one_line(msg: object) -> str:
    """``msg`` as one printable line (no newlines; bytes that are not UTF-8 as ``\\xNN``)."""
    text = " ".join(str(msg).split("\n"))
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit status (0 ok, 2 user error, 130/143 interrupted)."""
    name, old_term = "jpeglm", None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # its own arguments (--help lists every config key)
        from jpeglm.train import main as train_main

        return train_main(argv[1:])
    try:
        args = build_parser().parse_args(argv)
        name = f"jpeglm {args.command}"
        # SIGINT raises KeyboardInterrupt; SIGTERM does the same here (`jpeglm train` installs
        # its own handlers). Only in the main thread, and restored after.
        if args.command != "train" and threading.current_thread() is threading.main_thread():
            old_term = signal.signal(signal.SIGTERM, _on_sigterm)
        return int(args.func(args) or 0)
    except (UserError, ValueError, OSError) as e:
        print(f"{name}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print(f"{name}: terminated", file=sys.stderr)
        return 143
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


if __name__ == "__main__":
    sys.exit(main())
