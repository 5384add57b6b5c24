"""``rvos serve``: a local web demo (Gradio) on top of ``rvos predict``'s path.

Upload a video (or pick a synthetic example), type one sentence per line, and get the overlay
video, a zip of the per-sentence PNG masks and a few mask frames to look at. Every run goes
through :func:`rvos.predict.segment_video`, so frames stream through the Predictor's windows
and memory stays bounded however long the upload is; uploads are capped in size (bytes),
frame count and frame size, each with a clear message.

Everything the app writes (uploads, examples, results, Gradio's cache) lives in one temporary
folder that it owns and removes when the server stops (Ctrl-C or SIGTERM).

The app logic (:class:`Segmenter`) knows nothing of Gradio and raises
:class:`rvos.errors.RVOSError` for bad input; :func:`build_app` wraps it in the web page and
turns those errors into visible Gradio messages.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import tempfile
import time
import uuid
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rvos.data.video_io import IncompleteVideoWarning, VideoWriter, probe_video
from rvos.errors import RVOSError
from rvos.inference import Predictor
from rvos.predict import segment_video

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mov", ".mkv", ".m4v")
DEFAULT_MAX_FRAMES = 3000         # about 2 minutes at 25 fps
DEFAULT_MAX_UPLOAD_MB = 500
MAX_FRAME_PIXELS = 3840 * 2160    # 4K UHD
MAX_SENTENCES = 8
GALLERY_FRAMES = 4                # mask frames shown per sentence
EXAMPLE_VIDEOS = 3
EXAMPLE_SENTENCES = 2
EXAMPLE_FPS = 10.0
KEEP_RUNS = 8                     # older results are removed (the page already holds copies)
INSTALL_HINT = "pip install 'rvos[serve]'"


@dataclass(frozen=True)
class SegmentResult:
    """What one run returns: files inside the run folder, and a short Markdown summary."""

    overlay: Path                            # overlay.mp4 (H.264, plays in browsers)
    masks_zip: Path                          # masks/<k>/<frame>.png + expressions.json
    gallery: list[tuple[Path, str]]          # (mask PNG, caption), a few frames per sentence
    summary: str
    warnings: list[str]                      # a damaged or truncated upload, for example


def parse_sentences(text: str | None) -> list[str]:
    """One sentence per non-empty line; RVOSError when there is none or too many."""
    sentences = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not sentences:
        raise RVOSError("type at least one sentence (one per line)")
    if len(sentences) > MAX_SENTENCES:
        raise RVOSError(f"{len(sentences)} sentences: at most {MAX_SENTENCES} per run")
    return sentences


def _public_message(error: RVOSError) -> str:
    """The error's message with the server-side upload path shortened to the file's name."""
    message = str(error)
    if error.path is not None:
        message = message.replace(str(error.path), error.path.name)
    return message


class Segmenter:
    """Runs uploads through :func:`rvos.predict.segment_video` within the app's limits.

    workdir: the app's own folder; each run writes ``runs/<id>/`` there and only the last
    ``KEEP_RUNS`` runs are kept. Bad input raises :class:`RVOSError` with a message for the
    user (the upload named by its file name, not its server path).
    """

    def __init__(self, predictor: Predictor, workdir: Path, max_frames: int = DEFAULT_MAX_FRAMES,
                 threshold: float = 0.5):
        self.predictor = predictor
        self.runs = Path(workdir) / "runs"
        self.max_frames = max_frames
        self.threshold = threshold

    def check_video(self, video: str | Path | None):
        """The upload's VideoInfo, or RVOSError when it is missing, not a video, empty, or
        over the frame-count or frame-size cap."""
        if not video:
            raise RVOSError("upload a video (or pick an example) first")
        video = Path(video)
        if video.suffix.lower() not in VIDEO_EXTENSIONS:
            raise RVOSError(f"not a video file (expected {', '.join(VIDEO_EXTENSIONS)})", video)
        if video.stat().st_size == 0:
            raise RVOSError("the uploaded file is empty", video)
        info = probe_video(video)
        if info.num_frames > self.max_frames:
            raise RVOSError(f"video has {info.num_frames} frames; this server takes at most "
                            f"{self.max_frames} (rvos serve --max-frames); cut it shorter", video)
        if info.height * info.width > MAX_FRAME_PIXELS:
            raise RVOSError(f"frames are {info.width}x{info.height}; at most 4K "
                            f"({MAX_FRAME_PIXELS} pixels) is taken; scale the video down", video)
        return info

    def segment(self, video: str | Path | None, text: str | None) -> SegmentResult:
        """Segment ``video`` for each sentence (one per line) of ``text``."""
        sentences = parse_sentences(text)
        self.check_video(video)
        run = self._new_run()
        start = time.monotonic()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", IncompleteVideoWarning)
            summary = segment_video(self.predictor, video, sentences, run / "result",
                                    self.threshold, gif=False, progress=False)
        seconds = time.monotonic() - start
        notes = [str(w.message).replace(str(video), Path(video).name) for w in caught
                 if issubclass(w.category, IncompleteVideoWarning)]
        result = run / "result"
        return SegmentResult(overlay=result / summary["overlay_mp4"],
                             masks_zip=zip_masks(result, run / "masks.zip"),
                             gallery=gallery_items(result, summary),
                             summary=summary_markdown(summary, seconds, notes),
                             warnings=notes)

    def _new_run(self) -> Path:
        """A fresh run folder; the oldest ones beyond ``KEEP_RUNS`` are removed."""
        self.runs.mkdir(parents=True, exist_ok=True)
        old = sorted(self.runs.iterdir(), key=lambda p: p.name)
        for stale in old[:max(0, len(old) - KEEP_RUNS + 1)]:
            shutil.rmtree(stale, ignore_errors=True)
        run = self.runs / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        run.mkdir()
        return run


def zip_masks(result: Path, out_zip: Path) -> Path:
    """``masks/<k>/<frame>.png`` and ``expressions.json`` of a result folder in one zip,
    written file by file (PNGs are stored, already compressed)."""
    with zipfile.ZipFile(out_zip, "w", zipfile.ZIP_STORED) as archive:
        archive.write(result / "expressions.json", "expressions.json")
        for png in sorted((result / "masks").rglob("*.png")):
            archive.write(png, png.relative_to(result).as_posix())
    return out_zip


def gallery_items(result: Path, summary: dict) -> list[tuple[Path, str]]:
    """Up to ``GALLERY_FRAMES`` evenly spaced mask PNGs per sentence, with captions."""
    items = []
    for k, expression in summary["expressions"].items():
        pngs = sorted((result / expression["masks"]).glob("*.png"))
        step = max(1, -(-len(pngs) // GALLERY_FRAMES))
        items += [(png, f"[{k}] {expression['text']} - frame {png.stem}") for png in pngs[::step]]
    return items


def summary_markdown(summary: dict, seconds: float, notes: list[str]) -> str:
    """A few lines on what was done: frames, size, time, mask area per sentence."""
    height, width = summary["size"]
    lines = [f"**{summary['frames']} frames** ({width}x{height}, {summary['fps']:.3g} fps) "
             f"segmented in {seconds:.1f} s.", ""]
    lines += [f"- [{k}] *{e['text']}*: mean mask area {100 * e['mean_area_fraction']:.2f}% "
              f"of the frame" for k, e in summary["expressions"].items()]
    lines += [f"\n**Warning:** {note}" for note in notes]
    return "\n".join(lines)


def write_examples(folder: Path, count: int = EXAMPLE_VIDEOS) -> list[tuple[Path, str]]:
    """``count`` videos of the synthetic benchmark's test split (the demo's settings, seed 0),
    made on the fly as MP4s in ``folder``, each with two of its referring sentences."""
    from rvos.data.synthetic import SynthConfig, heldout_color_shape_pairs
    from rvos.data.synthetic.video import generate_video
    from rvos.demo import DEMO_SYNTH

    cfg = SynthConfig(**DEMO_SYNTH)
    heldout = heldout_color_shape_pairs(cfg.seed, cfg.heldout_pairs)
    folder.mkdir(parents=True, exist_ok=True)
    examples = []
    for index in range(count):
        video = generate_video(cfg, "test", index, heldout, Counter())
        path = folder / f"synthetic_test_{index:02d}.mp4"
        with VideoWriter(path, EXAMPLE_FPS) as writer:
            for frame in video.frames:
                writer.write(frame)
        texts = [e.text for e in video.expressions[:EXAMPLE_SENTENCES]]
        examples.append((path, "\n".join(texts)))
    return examples


# ----------------------------------------------------------------------------- the web page
PAGE_INTRO = """# rvos: referring video object segmentation
Upload a video (MP4, WebM, AVI, MOV) or pick a synthetic example, type one sentence per line
(each sentence names one object), and press **Segment**. You get the video with every
sentence's mask in its own colour, and a zip of the masks (one PNG per frame and sentence,
1 = the object)."""


def _system_font_theme(gr):
    """Gradio's default look with the browser's own fonts: nothing is fetched from the web."""
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


def build_app(segmenter: Segmenter, examples: list[tuple[Path, str]], max_upload_mb: int):
    """The Gradio Blocks page around ``segmenter``. Bad input shows as an error message."""
    import gradio as gr

    def run(video, text):
        try:
            result = segmenter.segment(video, text)
        except RVOSError as e:
            raise gr.Error(_public_message(e), print_exception=False) from None
        for note in result.warnings:
            gr.Warning(note)
        return (str(result.overlay), str(result.masks_zip),
                [(str(p), caption) for p, caption in result.gallery], result.summary)

    with gr.Blocks(title="rvos serve", analytics_enabled=False,
                   delete_cache=(3600, 3600)) as app:
        gr.Markdown(PAGE_INTRO)
        with gr.Row():
            with gr.Column():
                video_in = gr.Video(label=f"Video (at most {segmenter.max_frames} frames, "
                                          f"{max_upload_mb} MB)", sources=["upload"],
                                    include_audio=True, elem_id="input-video")
                text_in = gr.Textbox(label="Sentences, one per line", lines=3,
                                     placeholder="the red circle\nthe square on the left",
                                     elem_id="sentences")
                button = gr.Button("Segment", variant="primary", elem_id="run")
                if examples:
                    gr.Examples([[str(p), t] for p, t in examples], [video_in, text_in],
                                label="Synthetic examples (the benchmark's test videos)")
            with gr.Column():
                overlay_out = gr.Video(label="Overlay", elem_id="overlay", interactive=False,
                                       loop=True, autoplay=True)
                zip_out = gr.File(label="Masks (zip of PNGs)", elem_id="masks",
                                  interactive=False)
                summary_out = gr.Markdown(elem_id="summary")
        gallery_out = gr.Gallery(label="Masks, a few frames per sentence",
                                 columns=2 * GALLERY_FRAMES, height=240,
                                 object_fit="contain",
                                 elem_id="gallery")
        button.click(run, [video_in, text_in], [overlay_out, zip_out, gallery_out, summary_out],
                     concurrency_limit=1)
    return app


# ----------------------------------------------------------------------------- the server
def check_gradio() -> None:
    """RVOSError with the install command when Gradio is missing."""
    if importlib.util.find_spec("gradio") is None:
        raise RVOSError(f"the web demo needs Gradio, which is not installed: {INSTALL_HINT}")


def _stop_on_sigterm() -> None:
    """SIGTERM raises KeyboardInterrupt, so a terminated server cleans up like Ctrl-C."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def serve(predictor: Predictor, host: str = "127.0.0.1", port: int = 7860,
          max_frames: int = DEFAULT_MAX_FRAMES, max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB,
          threshold: float = 0.5, examples: bool = True) -> None:
    """Serve the app at ``http://host:port`` until Ctrl-C or SIGTERM, then remove its folder.

    Gradio's cache (uploads, the copies of results it serves) is pointed into the app's
    folder before Gradio is imported (it reads GRADIO_TEMP_DIR then); analytics are off.
    """
    check_gradio()
    _stop_on_sigterm()
    workdir = Path(tempfile.mkdtemp(prefix="rvos-serve-"))
    app = None
    try:
        os.environ["GRADIO_TEMP_DIR"] = str(workdir / "gradio")
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
        import gradio as gr

        segmenter = Segmenter(predictor, workdir, max_frames, threshold)
        bundled = write_examples(workdir / "examples") if examples else []
        app = build_app(segmenter, bundled, max_upload_mb)
        print(f"rvos serve: files in {workdir} (removed when the server stops)", flush=True)
        try:
            app.launch(server_name=host, server_port=port, share=False, inbrowser=False,
                       max_file_size=f"{max_upload_mb}mb", allowed_paths=[str(workdir)],
                       ssr_mode=False, show_error=True, theme=_system_font_theme(gr),
                       enable_monitoring=False)
        except OSError as e:   # the port is taken, or the address is not ours
            raise RVOSError(f"cannot serve on {host}:{port} ({e})") from None
    except KeyboardInterrupt:
        pass
    finally:
        if app is not None:
            app.close()
        shutil.rmtree(workdir, ignore_errors=True)
