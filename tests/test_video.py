"""AVC-LM's canonical clips: the paper's H.264 settings through PyAV, strict and tolerant
decoding, prompts, and agreement with Debian's ffmpeg command line."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

av = pytest.importorskip("av")

from jpeglm.data import bundled as samples  # noqa: E402
from jpeglm.video import codec as video  # noqa: E402
from jpeglm.video import h264  # noqa: E402
from jpeglm.video import sample as video_sample  # noqa: E402


def _moving_digits(frames: int = 15, h: int = 144, w: int = 256) -> np.ndarray:
    """Two bundled digits moving across a dark background (a Moving-MNIST-like clip)."""
    x, _ = samples.mnist()
    clip = np.full((frames, h, w, 3), 20, np.uint8)
    for t in range(frames):
        for d, (y0, x0, vy, vx) in enumerate(((10, 20, 4, 9), (90, 200, -3, -7))):
            y, xx = y0 + vy * t, x0 + vx * t
            clip[t, y : y + 28, xx : xx + 28] = np.maximum(clip[t, y : y + 28, xx : xx + 28],
                                                          x[d + 3][:, :, None])  # fmt: skip
    return clip


@pytest.fixture(scope="module")
def clip():
    return _moving_digits()


@pytest.fixture(scope="module")
def stream(clip):
    return video.encode(clip)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return 10 * np.log10(255**2 / max(mse, 1e-12))


def test_a_clip_encodes_with_the_papers_settings(clip, stream):
    s = h264.structure(stream)
    assert s["annexb"] and stream[:4] == b"\x00\x00\x00\x01"
    assert s["profile_idc"] == 66  # baseline
    assert (s["mb_width"], s["mb_height"]) == (16, 9)
    assert s["frames"] == 15 and s["slices_per_frame"] == [144] * 15  # one macroblock per slice
    assert set(s["slice_types"]) <= {0, 2}  # P and I slices only: no B-frames
    x = s["x264"]
    assert (x["qp"], x["rc"], x["bframes"], x["slice_max_mbs"]) == ("37", "cqp", "0", "1")
    assert (x["ref"], x["me"], x["subme"], x["trellis"], x["psy"]) == ("3", "dia", "0", "0", "0")
    assert (x["mixed_ref"], x["fast_pskip"], x["threads"]) == ("0", "0", "1")
    frames = video.decode(stream)
    assert frames.shape == (15, 144, 256, 3) and frames.dtype == np.uint8
    assert _psnr(frames, clip) > 25


def test_prepare_resamples_scales_and_pads(tmp_path):
    """An 8 s, 25 fps, 320x240 file -> 15 frames at 3 fps of 256x144, letterboxed."""
    path = tmp_path / "in.mp4"
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 320, 240, "yuv420p"
        for i in range(200):  # frame i is uniformly 50 + i: its index can be read back
            img = np.full((240, 320, 3), 50 + i, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    clip = video.prepare(path)
    assert clip.shape == (15, 144, 256, 3)
    # 4:3 into 16:9: scaled to 192x144, 32 black columns either side
    assert clip[:, :, :31].max() == 0 and clip[:, :, -31:].max() == 0
    assert clip[:, :, 34:222].min() >= 45
    # frame k is the source frame shown at k/3 s: frame floor(25 k / 3) of 25 fps
    got = clip[:, 72, 128, 0].astype(int) - 50
    want = [25 * k // 3 for k in range(15)]
    assert np.abs(got - want).max() <= 3, (got, want)
    # frames in memory are taken as already at 3 fps (or resampled from source_fps)
    frames = np.zeros((30, 100, 100, 3), np.uint8)
    assert video.prepare(frames).shape == (15, 144, 256, 3)
    assert video.prepare(frames, source_fps=6).shape == (15, 144, 256, 3)
    assert video.prepare(frames[:4]).shape == (4, 144, 256, 3)


def test_prompt_stream_cuts_after_whole_frames(stream):
    full = video.decode(stream)
    for k in (1, 10, 15):
        p = video.prompt_stream(stream, k)
        assert stream.startswith(p)
        np.testing.assert_array_equal(video.decode(p), full[:k])
    assert video.decode(video.prompt_stream(stream, 0), tolerant=True, frames=15).valid_frames == 0
    with pytest.raises(ValueError):
        video.prompt_stream(stream, 16)


def test_tolerant_decode_of_truncated_and_corrupt_streams(stream):
    full = video.decode(stream)
    rng = np.random.default_rng(0)
    last = -1
    for cut in sorted(rng.integers(0, len(stream), 25)):
        r = video.decode(stream[:cut], tolerant=True, frames=15)
        assert r.frames.shape == (15, 144, 256, 3) and 0 <= r.valid_frames <= 15
        assert r.valid_frames >= last  # more bytes never give fewer frames
        last = r.valid_frames
        np.testing.assert_array_equal(r.frames[: r.valid_frames], full[: r.valid_frames])
        if r.valid_frames:  # the rest repeats the last good frame
            assert (r.frames[r.valid_frames :] == full[r.valid_frames - 1]).all()
        with pytest.raises(h264.VideoError):
            video.decode(stream[:cut])
    assert video.decode(stream, tolerant=True).clean
    for _ in range(25):  # flipped bytes: never an exception
        bad = bytearray(stream)
        for i in rng.integers(0, len(bad), 3):
            bad[i] ^= 1 << int(rng.integers(0, 8))
        r = video.decode(bytes(bad), tolerant=True, frames=15)
        assert r.frames.shape == (15, 144, 256, 3)
    for junk in (b"", b"garbage" * 50, bytes(1000), b"\x00\x00\x01" * 100):
        r = video.decode(junk, tolerant=True, frames=15)
        assert r.valid_frames == 0 and (r.frames == 128).all()
        with pytest.raises(h264.VideoError):
            video.decode(junk)


def test_bad_clips_are_refused():
    with pytest.raises(TypeError):
        video.encode(np.zeros((2, 16, 16, 3), np.float32))
    with pytest.raises(ValueError):
        video.encode(np.zeros((2, 15, 16, 3), np.uint8))  # odd height
    with pytest.raises(ValueError):
        video.encode(np.zeros((0, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError):
        video.encode(np.zeros((2, 16, 16, 3), np.uint8), qp=60)
    with pytest.raises(FileNotFoundError):
        video.prepare("/no/such/clip.mp4")


def _yuv(frames_rgb: np.ndarray) -> bytes:
    """The yuv420p planes PyAV's encoder is fed (its own RGB -> YUV conversion)."""
    out = []
    for f in frames_rgb:
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
        out.append(vf.reformat(format="yuv420p").to_ndarray().tobytes())
    return b"".join(out)


def _decode_yuv_pyav(stream: bytes) -> bytes:
    import io

    with av.open(io.BytesIO(stream), format="h264") as c:
        return b"".join(f.to_ndarray(format="yuv420p").tobytes() for f in c.decode(video=0))


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="Debian's ffmpeg is not installed")
def test_ffmpeg_command_line_agrees(clip, stream):
    """Debian's ffmpeg decodes our streams to the same pictures as our decoder, and its
    libx264 run with the paper's command line on the same YUV input makes a stream of the same
    settings -- the same bytes when both libx264 builds are the same version."""
    dec = ["ffmpeg", "-v", "error", "-f", "h264", "-i", "-", "-f", "rawvideo", "-pix_fmt",
           "yuv420p", "-"]  # fmt: skip
    ref = subprocess.run(dec, input=stream, capture_output=True)
    assert ref.returncode == 0, ref.stderr
    assert ref.stdout == _decode_yuv_pyav(stream)  # bit-exact pictures

    cmd = ["ffmpeg", "-v", "error", "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", "256x144",
           "-r", "3", "-i", "-", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-profile:v",
           "baseline", "-qp", "37", "-bf", "0", "-an", "-sn", "-x264opts", "slice-max-mbs=1",
           "-trellis", "0", "-me_method", "dia", "-threads", "1", "-subq", "0", "-psy", "0",
           "-mixed-refs", "0", "-fast-pskip", "0", "-partitions", "none", "-refs", "3",
           "-bsf:v", "h264_mp4toannexb", "-f", "h264", "-"]  # fmt: skip
    cli = subprocess.run(cmd, input=_yuv(clip), capture_output=True)
    if cli.returncode != 0 and b"me_method" in cli.stderr:  # newer ffmpeg spells it -motion-est
        cmd[cmd.index("-me_method")] = "-motion-est"
        cli = subprocess.run(cmd, input=_yuv(clip), capture_output=True)
    assert cli.returncode == 0, cli.stderr
    ours, theirs = h264.structure(stream), h264.structure(cli.stdout)
    assert theirs["slices_per_frame"] == ours["slices_per_frame"]
    assert theirs["profile_idc"] == ours["profile_idc"]
    same_version = ours.get("x264_core") == theirs.get("x264_core")
    ignore = {"threads", "lookahead_threads"}
    diff = {k: (ours["x264"].get(k), v) for k, v in theirs["x264"].items()
            if k not in ignore and ours["x264"].get(k) != v}  # fmt: skip
    assert not diff, (
        f"settings differ (x264 core {ours.get('x264_core')} vs {theirs.get('x264_core')}): {diff}"
    )
    if same_version:
        assert cli.stdout == stream
    else:  # different encoder builds: same settings, same pictures within coding noise
        a = np.frombuffer(_decode_yuv_pyav(cli.stdout), np.uint8).astype(np.float64)
        b = np.frombuffer(_decode_yuv_pyav(stream), np.uint8)
        mse = np.mean((a - b) ** 2)
        assert a.shape == b.shape and (mse == 0 or 10 * np.log10(255**2 / mse) > 30)


def test_clip_scores_against_the_repeat_last_frame_baseline(clip):
    from jpeglm.eval.video import clip_scores, repeat_last_frame_baseline

    frames = video.decode(video.encode(clip))
    base = repeat_last_frame_baseline(frames, 10)
    assert (base[10:] == frames[9]).all() and (base[:10] == frames[:10]).all()
    exact = clip_scores([frames], [frames], 10)
    assert exact["psnr"] == 100.0 and exact["ssim"] == pytest.approx(1.0)
    assert exact["scored_frames"] == len(frames) - 10
    assert exact["baseline_psnr"] < 100 and exact["baseline_ssim"] < 1  # the digits move
    same = clip_scores([frames], [base], 10)  # generating the baseline scores as the baseline
    assert same["psnr"] == same["baseline_psnr"] and same["ssim"] == same["baseline_ssim"]
    grey = clip_scores([frames], [np.full_like(frames, 128)], 10)
    assert grey["psnr"] < same["psnr"]
    with pytest.raises(ValueError):
        clip_scores([frames], [frames[:5]], 3)
    with pytest.raises(ValueError):
        repeat_last_frame_baseline(frames, 0)


def test_moving_mnist_clips():
    a = samples.moving_mnist(3, frames=15, size=64, seed=1)
    assert a.shape == (3, 15, 64, 64) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, samples.moving_mnist(3, frames=15, size=64, seed=1))
    assert not np.array_equal(a, samples.moving_mnist(3, frames=15, size=64, seed=2))
    assert (a.reshape(3, 15, -1).max(axis=2) > 200).all()  # digits in every frame
    assert (np.abs(np.diff(a.astype(int), axis=1)).sum(axis=(2, 3)) > 0).all()  # they move
    s = video.encode(np.repeat(a[0][..., None], 3, axis=-1))
    assert h264.structure(s)["slices_per_frame"] == [16] * 15
    with pytest.raises(ValueError):
        samples.moving_mnist(1, size=20)


def held_clips(clips_dir: Path) -> list[str]:
    return [str(clips_dir / "001.npy"), str(clips_dir / "002.npy")]


def test_clips_go_through_the_same_tokenizer_prepare_trainer_and_sampler(tmp_path):
    """Moving-MNIST clips (32x32, 6 frames) -> BPE -> packed shards -> `jpeglm.train.loop` ->
    prompted completion after 3 frames, decoded tolerantly: the image pipeline, unchanged."""
    pytest.importorskip("torch")
    import json
    import sys

    from jpeglm.checkpoint.load import load_model
    from jpeglm.data import prepare as data
    from jpeglm.tokenizer import Tokenizer

    clips_dir = tmp_path / "clips"
    clips_dir.mkdir()
    clips = samples.moving_mnist(24, frames=6, size=32, seed=3)
    for i, c in enumerate(clips):
        np.save(clips_dir / f"{i:03d}.npy", c)
    settings = {"width": 32, "height": 32, "fps": 3, "seconds": 2, "qp": 37}
    streams = [video.encode(video.prepare(list(c), width=32, height=32, seconds=2)) for c in clips]
    tok = Tokenizer.train(streams, vocab_size=300, progress=False)
    tok.save(tmp_path / "tok.jpeglm")
    # the CLI's train-tokenizer --video learns the same merges from the same clips
    from jpeglm.cli import main

    assert main(["train-tokenizer", str(clips_dir), "-o", str(tmp_path / "tok_cli.jpeglm"),
                 "--video", "--frame-size", "32x32", "--seconds", "2", "--vocab-size", "300",
                 "--quiet"]) == 0  # fmt: skip
    tok_cli = Tokenizer.load(tmp_path / "tok_cli.jpeglm")
    assert tok_cli.vocab_size == tok.vocab_size
    assert all(tok_cli.encode(s) == tok.encode(s) for s in streams)
    index = data.prepare(clips_dir, tmp_path / "shards", tok, seq_len=2048, images_per_shard=8,
                         progress=False, video=settings)  # fmt: skip
    assert index["config"]["kind"] == "video" and index["images"] == 24
    seqs = np.concatenate([np.load(tmp_path / "shards" / s["file"]) for s in index["shards"]
                           if s["sequences"]])  # fmt: skip
    flat = seqs.reshape(-1)
    e = int(np.flatnonzero(flat == tok.eos_id)[0])
    assert tok.decode(flat[1:e].tolist()) == streams[0]  # the first clip's canonical stream
    # the trainer, as for images
    import subprocess

    from jpeglm_trainutil import env

    out = tmp_path / "run"
    args = [f"train_data={json.dumps([str(tmp_path / 'shards')])}",
            f"tokenizer={json.dumps(str(tmp_path / 'tok.jpeglm'))}", "batch_size=2",
            "max_steps=3", "warmup_steps=1", f"out={json.dumps(str(out))}", "progress=false",
            "eval_every=100", "ckpt_every=100"]  # fmt: skip
    r = subprocess.run([sys.executable, "-m", "jpeglm.train", *args], env=env(),
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    loaded = load_model(out)
    assert loaded.info["kind"] == "video" and loaded.info["video"]["width"] == 32
    got = video_sample.complete(loaded.model, loaded.tokenizer, [streams[1]], frames=3,
                                total_frames=6, size=(32, 32), max_tokens=200, seed=0)  # fmt: skip
    assert len(got) == 1 and got[0].frames.shape == (6, 32, 32, 3)
    assert got[0].valid_frames >= 3  # the prompt's frames at least
    np.testing.assert_array_equal(got[0].frames[:3], video.decode(streams[1])[:3])
    assert got[0].data.startswith(video.prompt_stream(streams[1], 3))
    # eval: generated frames against the held-out ones, beside repeat-the-last-frame
    from jpeglm.eval.video import evaluate_clip_completion

    res = evaluate_clip_completion(loaded.model, loaded.tokenizer, [streams[1], streams[2]],
                                   frames=3, total_frames=6, max_tokens=200, seed=0)  # fmt: skip
    assert res["clips"] == 2 and res["scored_frames"] == 6 and res["prompt_frames"] == 3
    assert 0 <= res["valid_generated_frames"] <= 1 and -1 <= res["ssim"] <= 1
    assert 0 < res["baseline_psnr"] < 100 and list(res["per_frame_psnr"]) == [3, 4, 5]
    # the CLI: sample / complete / eval know a video model from its record
    model = ["--model", str(out), "--max-tokens", "200", "--seed", "0"]
    assert main(["sample", *model, "-o", str(tmp_path / "s"), "-n", "2"]) == 0
    for i in range(2):
        strip = np.asarray(Image.open(tmp_path / "s" / f"sample_{i:03d}.png"))
        assert strip.shape == (32, 32 * 6, 3)  # the clip's 6 frames side by side
        assert (tmp_path / "s" / f"sample_{i:03d}.h264").stat().st_size > 0
    # clips are written as their batch finishes: Ctrl-C after the first keeps it (listed as
    # jpeglm's), and -n 10**9 lists no names up front
    from jpeglm.cli import video as video_commands

    real_write = video_commands._write

    def write_then_stop(out_dir, stem, c) -> None:  # noqa: ANN001
        real_write(out_dir, stem, c)
        raise KeyboardInterrupt

    video_commands._write = write_then_stop
    try:
        for n in ("3", "1000000000"):
            cut = tmp_path / f"cut{len(n)}"
            assert main(["sample", *model, "-o", str(cut), "-n", n, "--batch-size", "1"]) == 130
            assert sorted(p.name for p in cut.iterdir() if not p.name.startswith(".")) == [
                "sample_000.h264", "sample_000.png"]  # fmt: skip
            listed = (cut / ".jpeglm-outputs").read_text().splitlines()
            assert {"sample_000.h264", "sample_000.png"} <= set(listed)
        assert main(["complete", *model, "--frames", "3", "-o", str(tmp_path / "cc"),
                     "--batch-size", "1", *held_clips(clips_dir)]) == 130  # fmt: skip
        assert sorted(p.name for p in (tmp_path / "cc").iterdir() if p.suffix == ".h264") == [
            "001.h264"]  # fmt: skip
    finally:
        video_commands._write = real_write
    held = held_clips(clips_dir)
    assert main(["complete", *model, "--frames", "3", "-o", str(tmp_path / "c"), *held]) == 0
    done = (tmp_path / "c" / "001.h264").read_bytes()
    assert done.startswith(video.prompt_stream(streams[1], 3))
    assert main(["eval", *model, "--frames", "3", "-o", str(tmp_path / "e"), *held]) == 0
    res = json.loads((tmp_path / "e" / "results.json").read_text())
    assert res["clips"] == 2 and res["scored_frames"] == 6 and res["held_out"]["bits_per_byte"] > 0
    assert main(["eval", *model, "--frames", "6", "-o", str(tmp_path / "f"), *held]) == 2
    assert main(["sample", *model, "--size", "32", "-o", str(tmp_path / "g")]) == 2
    # a corrupt clip among the inputs: one line naming it, exit 2, nothing written
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"\x93NUMPY garbage")
    floats = tmp_path / "floats.npy"
    np.save(floats, clips[0].astype(np.float32))
    for b in (bad, floats):
        assert main(["complete", *model, "--frames", "3", "-o", str(tmp_path / "h"), held[0],
                     str(b)]) == 2  # fmt: skip
        assert not (tmp_path / "h" / "001.h264").exists()


def test_train_tokenizer_video_arguments(tmp_path, capsys):
    """train-tokenizer --video: bad clip settings, no clips, unreadable clips skipped."""
    from jpeglm.cli import main
    from jpeglm.tokenizer import Tokenizer

    d = tmp_path / "clips"
    d.mkdir()
    for i, c in enumerate(samples.moving_mnist(3, frames=3, size=32, seed=5)):
        np.save(d / f"{i}.npy", c)
    (d / "broken.npy").write_bytes(b"not a numpy file")
    base = ["train-tokenizer", str(d), "--video", "--frame-size", "32x32", "--seconds", "1",
            "--vocab-size", "270", "--quiet", "-o"]  # fmt: skip
    for bad in (["--frame-size", "33x32"], ["--frame-size", "big"], ["--fps", "0"],
                ["--qp", "60"]):  # fmt: skip
        assert main([*base, str(tmp_path / "x.jpeglm"), *bad]) == 2
        assert "--" in capsys.readouterr().err
    assert not (tmp_path / "x.jpeglm").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.png").write_bytes(b"")
    assert main(["train-tokenizer", str(empty), "--video", "-o", str(tmp_path / "y.jpeglm")]) == 2
    assert "no clips found" in capsys.readouterr().err
    assert main([*base, str(tmp_path / "t.jpeglm")]) == 0
    out = capsys.readouterr()
    assert "broken.npy" in out.err and "trained on 3 clips (1 skipped)" in out.out
    assert Tokenizer.load(tmp_path / "t.jpeglm").vocab_size >= 259
