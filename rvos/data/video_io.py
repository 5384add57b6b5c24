"""Video input and output: video files (PyAV) and folders of frames, read one frame at a time.

Reading
    probe_video(path)                  -> VideoInfo(num_frames, fps, height, width)
    iter_video_frames(path, start=0)   -> (frame_name, (H, W, 3) uint8 RGB), one at a time
    iter_video_windows(path, length, overlap)  -> VideoWindow of T frames, for windowed inference
    iter_frame_windows(frames, length, overlap) -> the same over any (name, frame) iterator

A *video file* is anything FFmpeg demuxes (.mp4, .avi, .mov, .mkv, .webm, .gif ...); its frames
are named by their index in the file, ``00000``, ``00001``, ... A *frame folder* holds
.jpg/.jpeg/.png images of one size, ordered by name with digit runs compared as numbers (so
``frame2`` precedes ``frame10``; zero-padded names like DAVIS's sort the same either way); its
frames keep their file stems as names, so predictions can be saved under the official names.

Memory is bounded whatever the video length: frames are decoded as they are consumed, and a
window iterator holds at most ``length`` frames.

Writing
    with VideoWriter("out.mp4", fps=24) as w:   # or "out.gif"
        w.write(frame)                          # (H, W, 3) uint8 RGB

MP4 is H.264 (libx264; MPEG-4 part 2 where FFmpeg lacks it), yuv420p, odd sizes padded to even
by repeating the last row/column. GIF is palette-quantised per frame and loops forever; it is
encoded frame by frame, so it too needs no more memory for a longer video. Either is written to
a hidden temporary file beside the target and renamed when closed, so an interrupted write never
leaves a file that looks complete.

Bad input (a missing path, an empty folder, a file FFmpeg cannot decode, a video with no
frames, frames of different sizes, an unreadable frame image) raises
:class:`rvos.errors.RVOSError` naming the file. A video file that decodes to fewer frames
than its container announces (a truncated or damaged file), or whose decoder reports errors
(damaged frames it concealed or dropped), gives an :class:`IncompleteVideoWarning` naming
the file once it has been read to the end: never a silently short or damaged result.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from collections import deque
from contextlib import contextmanager
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import av.logging
import numpy as np
from PIL import GifImagePlugin, Image

from rvos.errors import RVOSError

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")
# Containers without a frame count give one from duration x rate; allow this much rounding.
_ESTIMATE_SLACK = 0.02
_MAX_LISTED_DECODER_ERRORS = 3


class IncompleteVideoWarning(UserWarning):
    """A video file decoded to fewer frames than its container announces, or its decoder
    reported errors: the file is truncated or damaged and the result may be short."""
# A folder of frames carries no frame rate; DAVIS was captured at 24 fps.
DEFAULT_FRAME_FOLDER_FPS = 24.0


@dataclass(frozen=True)
class VideoInfo:
    """What a video holds, known before decoding it.

    num_frames: frames in the video (the container's count for a file, the image count for a
        folder; after rotation metadata is applied height/width are the displayed ones).
    fps: frames per second (``DEFAULT_FRAME_FOLDER_FPS`` for a frame folder, or what was passed).
    height, width: frame size in pixels, as :func:`iter_video_frames` yields them.
    """

    num_frames: int
    fps: float
    height: int
    width: int


@dataclass
class VideoWindow:
    """T consecutive frames for windowed inference.

    frames: (T, H, W, 3) uint8 RGB.
    names: the T frame names.
    first_index: position of ``frames[0]`` in the iterated sequence (0-based).
    num_repeated: how many leading frames were already part of the previous window (0 for
        the first one). A consumer that keeps one output per frame keeps
        ``frames[num_repeated:]``; one that blends overlapping outputs uses all of them.
    """

    frames: np.ndarray
    names: list[str]
    first_index: int
    num_repeated: int

    @property
    def new_names(self) -> list[str]:
        """Names of the frames this window shows for the first time."""
        return self.names[self.num_repeated:]


# ----------------------------------------------------------------------------- frame folders


def _natural_key(name: str) -> list:
    return [(0, int(part), part) if part.isdigit() else (1, 0, part)
            for part in re.split(r"(\d+)", name) if part]


def list_frame_files(folder: str | Path) -> list[Path]:
    """The frame images of ``folder`` (.jpg/.jpeg/.png, hidden files skipped) in name order,
    digit runs compared as numbers. Raises RVOSError when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RVOSError("frame folder not found", folder)
    files = [p for p in folder.iterdir()
             if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in FRAME_EXTENSIONS]
    if not files:
        raise RVOSError(f"no frames found (expected {'/'.join(FRAME_EXTENSIONS)} images)", folder)
    return sorted(files, key=lambda p: _natural_key(p.name))


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) read from the image header only."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except Exception as e:
        raise RVOSError(f"cannot read image ({type(e).__name__}: {e})", path) from None
    return height, width


def _read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except Exception as e:
        raise RVOSError(f"cannot read image ({type(e).__name__}: {e})", path) from None


def _probe_folder(folder: Path, fps: float) -> VideoInfo:
    files = list_frame_files(folder)
    height, width = _image_size(files[0])
    for path in files[1:]:  # headers only: cheap, and a size mismatch fails before inference
        size = _image_size(path)
        if size != (height, width):
            raise RVOSError(f"frame is {size[1]}x{size[0]} but {files[0].name} is "
                            f"{width}x{height}; all frames of a video must have one size", path)
    return VideoInfo(num_frames=len(files), fps=fps, height=height, width=width)


def _iter_folder(folder: Path, start: int, stop: int | None, step: int
                 ) -> Iterator[tuple[str, np.ndarray]]:
    files = list_frame_files(folder)
    first_shape = None
    for path in files[start:stop:step]:
        frame = _read_rgb(path)
        if first_shape is None:
            first_shape = frame.shape
        elif frame.shape != first_shape:
            raise RVOSError(f"frame is {frame.shape[1]}x{frame.shape[0]} but earlier frames are "
                            f"{first_shape[1]}x{first_shape[0]}; all frames of a video must "
                            "have one size", path)
        yield path.stem, frame


# ------------------------------------------------------------------------------- video files


def _open_video(path: Path) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    try:
        container = av.open(str(path), mode="r")
    except Exception as e:
        raise RVOSError(f"cannot open as a video ({type(e).__name__}: {e})", path) from None
    if not container.streams.video:
        container.close()
        raise RVOSError("contains no video stream (no frames to read)", path)
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return container, stream


def _decode(path: Path, container, stream) -> Iterator[av.VideoFrame]:
    """Decoded frames; decoder errors become RVOSError naming the file and the frame."""
    index = 0
    try:
        for frame in container.decode(stream):
            yield frame
            index += 1
    except av.error.FFmpegError as e:
        raise RVOSError(f"corrupt video: decoding failed after {index} frames "
                        f"({type(e).__name__}: {e})", path) from None


def _quarter_turns(frame: av.VideoFrame) -> int:
    """Counter-clockwise quarter turns that show the frame upright (phone videos store a
    display rotation, e.g. -90 for portrait; FFmpeg's players apply it, so do we)."""
    return int(round(getattr(frame, "rotation", 0) / 90.0)) % 4  # PyAV < 13 has no rotation


def _to_rgb(frame: av.VideoFrame, width: int, height: int, turns: int) -> np.ndarray:
    if (frame.width, frame.height) != (width, height):  # a mid-stream size change
        rgb = frame.reformat(width=width, height=height, format="rgb24").to_ndarray()
    else:
        rgb = frame.to_ndarray(format="rgb24")
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def _stream_fps(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def _probe_file(path: Path) -> VideoInfo:
    container, stream = _open_video(path)
    try:
        first = next(_decode(path, container, stream), None)
        if first is None:
            raise RVOSError("video has no frames", path)
        num_frames = stream.frames
        if num_frames <= 0:  # containers without a frame count (WebM, MKV): count packets
            container.seek(0)
            num_frames = sum(1 for packet in container.demux(stream) if packet.size)
        height, width = first.height, first.width
        if _quarter_turns(first) % 2:
            height, width = width, height
        return VideoInfo(num_frames=max(num_frames, 1), fps=_stream_fps(stream),
                         height=height, width=width)
    except av.error.FFmpegError as e:
        raise RVOSError(f"corrupt video ({type(e).__name__}: {e})", path) from None
    finally:
        container.close()


def _expected_frames(container, stream) -> tuple[int, bool] | None:
    """(frames the container announces, whether that is exact): the stream's frame count,
    else duration x rate (WebM, MKV); None when the container says neither."""
    if stream.frames > 0:
        return int(stream.frames), True
    fps = _stream_fps(stream)
    if stream.duration and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container.duration:
        duration = container.duration / av.time_base
    else:
        return None
    return (int(round(duration * fps)), False) if fps > 0 and duration > 0 else None


@contextmanager
def _capture_decoder_errors(container, stream):
    """Collect the error messages FFmpeg logs for this container's demuxer and decoder
    (from any thread: decoding is threaded) while the block runs. FFmpeg conceals or drops
    damaged frames and only logs it; these messages are how a damaged file is noticed."""
    names = {stream.codec_context.name, container.format.name}
    previous = av.logging.get_level()
    if previous is None or previous < av.logging.ERROR:
        av.logging.set_level(av.logging.ERROR)
    errors: list[str] = []
    try:
        with av.logging.Capture(local=False) as logs:
            yield errors
            errors.extend(message.strip() for level, name, message in logs
                          if level <= av.logging.ERROR and name in names)
    finally:
        av.logging.set_level(previous)


def _warn_if_incomplete(path: Path, decoded: int, expected: tuple[int, bool] | None,
                        errors: list[str]) -> None:
    """One :class:`IncompleteVideoWarning` when a video read to its end came out short or
    with decoder errors."""
    problems = []
    if expected is not None:
        count, exact = expected
        slack = 0 if exact else max(1, int(_ESTIMATE_SLACK * count))
        if decoded < count - slack:
            how = "lists" if exact else "implies (duration x rate)"
            problems.append(f"decoded {decoded} frames but its container {how} {count}: the file is "
                            f"truncated or damaged, about {count - decoded} frames are missing")
    if errors:
        listed = "; ".join(errors[:_MAX_LISTED_DECODER_ERRORS])
        problems.append(f"FFmpeg reported {len(errors)} decoding error(s) ({listed}): some frames "
                        f"may be damaged or dropped")
    if problems:
        warnings.warn(f"{path}: " + "; ".join(problems), IncompleteVideoWarning, stacklevel=3)


def _iter_file(path: Path, start: int, stop: int | None, step: int
               ) -> Iterator[tuple[str, np.ndarray]]:
    container, stream = _open_video(path)
    try:
        expected = _expected_frames(container, stream)
        size = turns = None
        count = 0
        read_to_end = True
        with _capture_decoder_errors(container, stream) as errors:
            for index, frame in enumerate(_decode(path, container, stream)):
                if size is None:
                    size, turns = (frame.width, frame.height), _quarter_turns(frame)
                count += 1
                if stop is not None and index >= stop:
                    read_to_end = False
                    break
                # Frames before `start` are decoded and dropped: exact, and cheap next to a model.
                if index < start or (index - start) % step:
                    continue
                yield f"{index:05d}", _to_rgb(frame, size[0], size[1], turns)
        if count == 0:
            raise RVOSError("video has no frames", path)
        if read_to_end:
            _warn_if_incomplete(path, count, expected, errors)
    finally:
        container.close()


# ---------------------------------------------------------------------------- public readers


def _check_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise RVOSError("video not found (expected a video file or a folder of frames)", path)
    return path


def probe_video(path: str | Path, folder_fps: float = DEFAULT_FRAME_FOLDER_FPS) -> VideoInfo:
    """Frame count, rate and size of a video file or a frame folder.

    A file is opened and its first frame decoded (so a file FFmpeg cannot decode fails here,
    not halfway through inference); every image header of a folder is read (so frames of
    different sizes fail here too). ``folder_fps`` is the rate reported for a folder.
    """
    path = _check_path(path)
    if path.is_dir():
        return _probe_folder(path, folder_fps)
    return _probe_file(path)


def iter_video_frames(path: str | Path, start: int = 0, stop: int | None = None,
                      step: int = 1) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(frame_name, frame)`` for frames ``start, start+step, ...`` below ``stop``.

    frame: (H, W, 3) uint8 RGB, C-contiguous, a new array each time. Names are the file stems
    of a frame folder, or the frame index (``00000``, ``00001``, ...) in a video file, so a
    subsampled video keeps the names of the frames it came from. One frame is held at a time.
    """
    if start < 0 or step < 1 or (stop is not None and stop < 0):
        raise ValueError(f"need start >= 0, stop >= 0 and step >= 1 (got {start}, {stop}, {step})")
    path = _check_path(path)
    if path.is_dir():
        return _iter_folder(path, start, stop, step)
    return _iter_file(path, start, stop, step)


def iter_frame_windows(frames: Iterable[tuple[str, np.ndarray]], length: int, overlap: int = 0,
                       fill_last: bool = True) -> Iterator[VideoWindow]:
    """Group a ``(name, frame)`` stream into windows of ``length`` frames that overlap by
    ``overlap`` frames (each window starts ``length - overlap`` frames after the previous).

    Every frame appears in at least one window. When the frames run out mid-window, the last
    window holds the remaining frames and, if ``fill_last``, is filled up to ``length`` with
    the frames before them (``num_repeated`` says how many it repeats); a video shorter than
    ``length`` gives one shorter window. At most ``length`` frames are held at a time.
    """
    if length < 1 or not 0 <= overlap < length:
        raise ValueError(f"need length >= 1 and 0 <= overlap < length (got {length}, {overlap})")
    stride = length - overlap
    held: deque[tuple[int, str, np.ndarray]] = deque(maxlen=length)
    next_start = 0   # sequence index where the next full window begins
    emitted_end = 0  # one past the last frame already yielded in a window

    def window(items: list[tuple[int, str, np.ndarray]]) -> VideoWindow:
        first = items[0][0]
        return VideoWindow(frames=np.stack([f for _, _, f in items]),
                           names=[n for _, n, _ in items], first_index=first,
                           num_repeated=max(emitted_end - first, 0))

    total = 0
    for index, (name, frame) in enumerate(frames):
        held.append((index, name, frame))
        total = index + 1
        if total == next_start + length:
            yield window(list(held))
            emitted_end = total
            next_start += stride
    if total > emitted_end:
        items = list(held) if fill_last else [item for item in held if item[0] >= next_start]
        yield window(items)


def iter_video_windows(path: str | Path, length: int, overlap: int = 0, start: int = 0,
                       stop: int | None = None, step: int = 1,
                       fill_last: bool = True) -> Iterator[VideoWindow]:
    """Windows of ``length`` frames of a video file or frame folder (see
    :func:`iter_frame_windows` and :func:`iter_video_frames`)."""
    return iter_frame_windows(iter_video_frames(path, start, stop, step), length, overlap,
                              fill_last)


# ---------------------------------------------------------------------------------- writing


def _encoder_available(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except Exception:
        return False
    return True


class VideoWriter:
    """Write (H, W, 3) uint8 RGB frames to an ``.mp4`` or ``.gif``, one at a time.

    Use as a context manager: the file appears (atomically renamed from a hidden temporary
    file) when the block ends normally; if the block raises, the temporary file is deleted and
    nothing appears. All frames must have the size of the first one.

    fps: frames per second. For a GIF, delays are whole centiseconds (accumulated so the total
        duration stays right) of at least 2, so rates above 50 fps play at 50.
    crf: H.264 quality (lower is better; 18 is visually lossless, 23 is libx264's default).
    codec: the MP4 encoder; by default ``libx264``, or ``mpeg4`` where FFmpeg lacks it.
    """

    def __init__(self, path: str | Path, fps: float, crf: int = 20, codec: str | None = None):
        self.path = Path(path)
        self.kind = self.path.suffix.lower()
        if self.kind not in (".mp4", ".gif"):
            raise RVOSError("output video must end in .mp4 or .gif", self.path)
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps = float(fps)
        self.crf = crf
        self.codec = codec or ("libx264" if _encoder_available("libx264") else "mpeg4")
        self.frames_written = 0
        self.frame_size: tuple[int, int] | None = None   # (height, width) of the input frames
        self._tmp = self.path.with_name(f".{self.path.name}.partial-{os.getpid()}")
        self._container = None
        self._stream = None
        self._gif: BinaryIO | None = None
        self._gif_time_cs = 0
        self._closed = False

    # -- context manager
    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- frames
    def write(self, frame: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 RGB frame."""
        if self._closed:
            raise ValueError(f"{self.path}: write() after close()")
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"{self.path}: a frame must be (H, W, 3) uint8 RGB, "
                             f"got {frame.shape} {frame.dtype}")
        if self.frame_size is None:
            self.frame_size = frame.shape[:2]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._open()
        elif frame.shape[:2] != self.frame_size:
            raise ValueError(f"{self.path}: frame {self.frames_written} is {frame.shape[1]}x"
                             f"{frame.shape[0]} but the video is {self.frame_size[1]}x"
                             f"{self.frame_size[0]}")
        if self.kind == ".gif":
            self._write_gif(frame)
        else:
            self._write_mp4(frame)
        self.frames_written += 1

    def close(self) -> None:
        """Finish the file and move it into place. Writing no frame at all is an error (an
        empty video is not a valid file), and leaves nothing behind."""
        if self._closed:
            return
        if self.frames_written == 0:
            self.abort()
            # Called from a `finally:` while another error propagates, that error is the one
            # the user must see; do not replace it with this consequence of it.
            if sys.exc_info()[0] is None:
                raise RVOSError("no frames were written, so no video was made", self.path)
            return
        try:
            self._finish()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Stop writing and delete the temporary file; the target path is left untouched."""
        self._closed = True
        try:
            if self._container is not None:
                self._container.close()
            if self._gif is not None:
                self._gif.close()
        except Exception:
            pass
        self._container = self._gif = None
        self._tmp.unlink(missing_ok=True)

    # -- MP4
    def _open(self) -> None:
        if self.kind == ".gif":
            self._gif = self._tmp.open("wb")
            return
        height, width = self.frame_size
        self._container = av.open(str(self._tmp), mode="w", format="mp4")
        stream = self._container.add_stream(
            self.codec, rate=Fraction(self.fps).limit_denominator(1001))
        stream.width, stream.height = width + width % 2, height + height % 2
        stream.pix_fmt = "yuv420p"
        if self.codec in ("libx264", "h264"):
            stream.options = {"crf": str(self.crf), "preset": "medium"}
        else:  # MPEG-4 part 2 has no CRF; give it a bit rate that keeps overlays sharp
            stream.bit_rate = max(1_000_000, int(0.25 * stream.width * stream.height * self.fps))
        self._stream = stream

    def _write_mp4(self, frame: np.ndarray) -> None:
        height, width = frame.shape[:2]
        if height % 2 or width % 2:  # yuv420p needs even sizes: repeat the last row/column
            frame = np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        video_frame.pts = self.frames_written
        video_frame.time_base = Fraction(1, 1) / self._stream.codec_context.framerate
        for packet in self._stream.encode(video_frame):
            self._container.mux(packet)

    # -- GIF
    def _write_gif(self, frame: np.ndarray) -> None:
        image = Image.fromarray(frame).quantize(256, method=Image.Quantize.FASTOCTREE,
                                                dither=Image.Dither.NONE)
        # Delays are whole centiseconds; take them from the running total so they average out.
        end_cs = round((self.frames_written + 1) * 100 / self.fps)
        delay_cs = max(end_cs - self._gif_time_cs, 2)
        self._gif_time_cs += delay_cs
        if self.frames_written == 0:
            header, _ = GifImagePlugin.getheader(image.copy(), None, {"loop": 0})
            self._gif.write(b"".join(header))
        # Every frame carries its own palette, so colours stay right as the scene changes.
        for chunk in GifImagePlugin.getdata(image, (0, 0), duration=delay_cs * 10,
                                            include_color_table=True):
            self._gif.write(chunk)

    def _finish(self) -> None:
        if self._gif is not None:
            self._gif.write(b";")  # GIF trailer
            self._gif.close()
            self._gif = None
        if self._container is not None:
            for packet in self._stream.encode():  # flush the encoder's delayed frames
                self._container.mux(packet)
            self._container.close()
            self._container = None
