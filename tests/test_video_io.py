"""Video I/O: MP4/GIF round trips, frame folders, windows, streaming, and bad input."""

from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from rvos.data.video_io import (VideoWriter, iter_frame_windows, iter_video_frames,
                                iter_video_windows, probe_video)
from rvos.errors import RVOSError

H, W, N = 48, 64, 12


def moving_squares(n: int = N, h: int = H, w: int = W) -> list[np.ndarray]:
    """A dark gradient with a bright square moving right and a blue one moving down."""
    ys, xs = np.mgrid[0:h, 0:w]
    frames = []
    for i in range(n):
        f = np.zeros((h, w, 3), np.uint8)
        f[..., 0] = (xs * 80 // w).astype(np.uint8)
        f[..., 1] = 30
        f[..., 2] = (ys * 80 // h).astype(np.uint8)
        f[8:24, 3 * i:3 * i + 16] = (250, 210, 40)
        f[2 * i:2 * i + 10, 40:52] = (40, 60, 240)
        frames.append(f)
    return frames


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def write(path: Path, frames, fps: float = 24.0, **kw) -> Path:
    with VideoWriter(path, fps, **kw) as writer:
        for f in frames:
            writer.write(f)
    return path


def assert_reads_back(path: Path, frames, tolerance: float):
    names, got = zip(*iter_video_frames(path))
    assert list(names) == [f"{i:05d}" for i in range(len(frames))]
    for i, g in enumerate(got):
        assert g.shape == frames[i].shape and g.dtype == np.uint8
        err = mean_abs(g, frames[i])
        assert err < tolerance, f"frame {i}: mean abs error {err:.2f}"
        # order is kept: each decoded frame is closer to its own source than to its neighbours
        for j in (i - 1, i + 1):
            if 0 <= j < len(frames):
                assert err < mean_abs(g, frames[j])


@pytest.mark.parametrize("codec", [None, "mpeg4"])
def test_mp4_round_trip_keeps_count_size_rate_and_content(tmp_path, codec):
    frames = moving_squares()
    path = write(tmp_path / "clip.mp4", frames, fps=24.0, codec=codec)
    info = probe_video(path)
    assert (info.num_frames, info.height, info.width) == (N, H, W)
    assert info.fps == pytest.approx(24.0)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == ("h264" if codec is None else "mpeg4")
        assert stream.codec_context.pix_fmt == "yuv420p"
    assert_reads_back(path, frames, tolerance=4.0)


def test_mp4_pads_odd_sizes_to_even(tmp_path):
    frames = moving_squares(6, 47, 63)
    path = write(tmp_path / "odd.mp4", frames)
    info = probe_video(path)
    assert (info.height, info.width) == (48, 64)
    for (_, got), src in zip(iter_video_frames(path), frames):
        assert mean_abs(got[:47, :63], src) < 4.0
        # the padding repeats the last row/column instead of adding a black border
        assert mean_abs(got[47, :63], src[46]) < 8.0 and mean_abs(got[:47, 63], src[:, 62]) < 8.0


def test_non_integer_frame_rates_survive(tmp_path):
    path = write(tmp_path / "ntsc.mp4", moving_squares(4), fps=30000 / 1001)
    assert probe_video(path).fps == pytest.approx(29.97, abs=1e-3)


def test_gif_round_trip_loops_forever_and_keeps_duration(tmp_path):
    frames = moving_squares()
    path = write(tmp_path / "clip.gif", frames, fps=24.0)
    info = probe_video(path)
    assert (info.num_frames, info.height, info.width) == (N, H, W)
    # thousands of gradient colours squeezed into 256 per frame
    assert_reads_back(path, frames, tolerance=4.0)
    with Image.open(path) as gif:
        assert gif.info["loop"] == 0
        total_ms = 0
        for i in range(gif.n_frames):
            gif.seek(i)
            total_ms += gif.info["duration"]
    assert total_ms == pytest.approx(1000 * N / 24.0, abs=10)


def test_interrupted_write_leaves_no_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "out.mp4"
    target.write_bytes(b"previous result")
    with pytest.raises(KeyboardInterrupt):
        with VideoWriter(target, 24.0) as writer:
            for f in moving_squares(3):
                writer.write(f)
            raise KeyboardInterrupt
    assert target.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]  # no temp file left
    gif = tmp_path / "out.gif"
    with pytest.raises(RuntimeError):
        with VideoWriter(gif, 24.0) as writer:
            writer.write(moving_squares(1)[0])
            raise RuntimeError("crash")
    assert not gif.exists()


def test_the_file_appears_only_when_closed(tmp_path):
    target = tmp_path / "out.mp4"
    with VideoWriter(target, 24.0) as writer:
        writer.write(moving_squares(1)[0])
        assert not target.exists()
    assert target.is_file()


def test_writer_refuses_bad_frames_and_empty_videos(tmp_path):
    with pytest.raises(RVOSError, match="no frames were written"):
        with VideoWriter(tmp_path / "empty.mp4", 24.0):
            pass
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="is 32x32 but the video is 64x48"):
        with VideoWriter(tmp_path / "sizes.mp4", 24.0) as writer:
            writer.write(moving_squares(1)[0])
            writer.write(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        VideoWriter(tmp_path / "f.mp4", 24.0).write(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(RVOSError, match="must end in .mp4 or .gif"):
        VideoWriter(tmp_path / "out.avi", 24.0)
    assert not any(tmp_path.iterdir())


def test_closing_in_a_finally_does_not_hide_the_original_error(tmp_path):
    writer = VideoWriter(tmp_path / "out.mp4", 24.0)
    with pytest.raises(KeyError, match="the real problem"):
        try:
            raise KeyError("the real problem")
        finally:
            writer.close()  # no frames: would be an error of its own
    assert not any(tmp_path.iterdir())


def save_frames(folder: Path, names: list[str], frames) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, f in zip(names, frames):
        Image.fromarray(f).save(folder / name)


def test_frame_folder_keeps_names_in_natural_order_and_exact_pixels(tmp_path):
    frames = moving_squares(4)
    folder = tmp_path / "frames"
    save_frames(folder, ["f10.png", "f2.png", "f1.png", "F3.PNG"], frames)
    (folder / "notes.txt").write_text("not a frame")
    Image.fromarray(frames[0]).save(folder / ".hidden.png")
    (folder / "sub.png").mkdir()
    info = probe_video(folder, folder_fps=6.0)
    assert (info.num_frames, info.fps, info.height, info.width) == (4, 6.0, H, W)
    names, got = zip(*iter_video_frames(folder))
    assert names == ("F3", "f1", "f2", "f10")
    by_name = dict(zip(["f10", "f2", "f1", "F3"], frames))
    for name, g in zip(names, got):
        np.testing.assert_array_equal(g, by_name[name])


def test_grey_and_rgba_frames_come_out_rgb(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    Image.new("L", (W, H), 128).save(folder / "0.png")
    Image.new("RGBA", (W, H), (10, 20, 30, 40)).save(folder / "1.png")
    (_, grey), (_, rgba) = iter_video_frames(folder)
    assert grey.shape == rgba.shape == (H, W, 3)
    assert (grey == 128).all() and (rgba == (10, 20, 30)).all()


def test_start_stop_step_keep_the_source_names(tmp_path):
    frames = moving_squares()
    video = write(tmp_path / "clip.mp4", frames)
    folder = tmp_path / "frames"
    save_frames(folder, [f"{i:05d}.jpg" for i in range(N)], frames)
    for source in (video, folder):
        names = [n for n, _ in iter_video_frames(source, start=3, step=4)]
        assert names == ["00003", "00007", "00011"]
        names = [n for n, _ in iter_video_frames(source, start=2, stop=5)]
        assert names == ["00002", "00003", "00004"]
    (_, got), = iter_video_frames(video, start=5, stop=6)
    assert mean_abs(got, frames[5]) < mean_abs(got, frames[4])


def test_frames_stream_one_at_a_time(tmp_path):
    # A corrupt last frame fails only when reached: earlier frames were handed out first.
    folder = tmp_path / "frames"
    save_frames(folder, ["00000.jpg", "00001.jpg", "00002.jpg"], moving_squares(3))
    data = (folder / "00002.jpg").read_bytes()
    (folder / "00002.jpg").write_bytes(data[: len(data) // 3])
    frames = iter_video_frames(folder)
    assert next(frames)[0] == "00000" and next(frames)[0] == "00001"
    with pytest.raises(RVOSError, match="00002.jpg"):
        next(frames)


def test_mixed_frame_sizes_are_refused_naming_the_frame(tmp_path):
    folder = tmp_path / "frames"
    save_frames(folder, ["00000.png", "00001.png"], moving_squares(2))
    Image.new("RGB", (32, 32)).save(folder / "00002.png")
    with pytest.raises(RVOSError, match=r"00002\.png.*32x32.*64x48"):
        probe_video(folder)
    with pytest.raises(RVOSError, match=r"00002\.png"):
        list(iter_video_frames(folder))


def test_bad_inputs_name_the_file(tmp_path):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(RVOSError, match="not found") as err:
        probe_video(missing)
    assert str(missing) in str(err.value)
    with pytest.raises(RVOSError, match="not found"):
        iter_video_frames(missing)

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no frames here")
    with pytest.raises(RVOSError, match="no frames found") as err:
        probe_video(empty)
    assert str(empty) in str(err.value)

    fake = tmp_path / "fake.mp4"
    fake.write_text("this is a text file, not a video")
    for read in (probe_video, lambda p: list(iter_video_frames(p))):
        with pytest.raises(RVOSError, match="cannot open as a video") as err:
            read(fake)
        assert str(fake) in str(err.value)

    truncated = tmp_path / "truncated.mp4"
    data = write(tmp_path / "whole.mp4", moving_squares()).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(RVOSError, match="truncated.mp4"):
        probe_video(truncated)


def test_a_video_without_frames_is_refused(tmp_path):
    # An MP4 whose encoder received no frames: the container holds no video track at all.
    path = tmp_path / "noframes.mp4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=24)
        stream.width, stream.height = W, H
        container.start_encoding()
    with pytest.raises(RVOSError, match="no video stream") as err:
        probe_video(path)
    assert str(path) in str(err.value)
    with pytest.raises(RVOSError, match="no video stream"):
        list(iter_video_frames(path))


def test_webm_without_a_frame_count_is_counted(tmp_path):
    if "libvpx-vp9" not in av.codecs_available:
        pytest.skip("this FFmpeg build has no VP9 encoder")
    path = tmp_path / "clip.webm"
    frames = moving_squares(7)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libvpx-vp9", rate=24)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())
    assert probe_video(path).num_frames == 7
    assert_reads_back(path, frames, tolerance=8.0)


def test_phone_videos_with_a_display_rotation_come_out_upright(tmp_path):
    path = tmp_path / "portrait.mp4"
    frame = np.zeros((H, W, 3), np.uint8)
    frame[:16, :16] = 255  # marker in the stored top-left corner
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        if not hasattr(stream, "set_display_rotation"):
            pytest.skip("this PyAV cannot write a display rotation")
        stream.set_display_rotation(-90)  # what phones store for portrait: turn 90° clockwise
        container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    info = probe_video(path)
    assert (info.height, info.width) == (W, H)
    (_, upright), = iter_video_frames(path)
    assert upright.shape == (W, H, 3)
    # a clockwise quarter turn carries the top-left corner to the top-right
    assert upright[:16, -16:].mean() > 200 and upright[:16, :16].mean() < 50


def numbered(n: int):
    return ((f"{i:05d}", np.full((2, 2, 3), i, np.uint8)) for i in range(n))


@pytest.mark.parametrize("n,length,overlap", [(12, 5, 2), (12, 4, 0), (10, 5, 0), (3, 5, 1),
                                              (1, 1, 0), (7, 3, 2)])
@pytest.mark.parametrize("fill_last", [True, False])
def test_windows_cover_every_frame_once_as_new(n, length, overlap, fill_last):
    windows = list(iter_frame_windows(numbered(n), length, overlap, fill_last))
    new = [name for w in windows for name in w.new_names]
    assert new == [f"{i:05d}" for i in range(n)]
    for k, w in enumerate(windows):
        idx = [int(name) for name in w.names]
        assert idx == list(range(w.first_index, w.first_index + len(idx)))  # consecutive
        assert w.frames.shape == (len(idx), 2, 2, 3)
        assert [int(v) for v in w.frames[:, 0, 0, 0]] == idx
        if k == 0:
            assert w.num_repeated == 0
        elif k < len(windows) - 1:
            assert w.num_repeated == overlap
        full = len(idx) == min(length, n)
        assert full or (not fill_last and k == len(windows) - 1)
    if not fill_last and len(windows) > 1:
        assert windows[-1].num_repeated == overlap


def test_windows_do_not_read_ahead():
    pulled = []

    def frames():
        for name, f in numbered(10):
            pulled.append(name)
            yield name, f

    for w in iter_frame_windows(frames(), length=4, overlap=1):
        if w.first_index + len(w.names) < 10:
            assert len(pulled) == w.first_index + len(w.names)  # nothing beyond the window


def test_windows_of_a_video_file(tmp_path):
    path = write(tmp_path / "clip.mp4", moving_squares())
    windows = list(iter_video_windows(path, length=5, overlap=1))
    assert [w.first_index for w in windows] == [0, 4, 7]
    assert all(w.frames.shape == (5, H, W, 3) for w in windows)
    assert windows[-1].names[-1] == "00011"


def test_real_davis_frames(assets):
    folder = assets / "davis-real" / "JPEGImages" / "480p" / "blackswan"
    info = probe_video(folder)
    assert (info.num_frames, info.height, info.width) == (50, 480, 854)
    names, frames = zip(*iter_video_frames(folder, stop=2))
    assert names == ("00000", "00001")
    with Image.open(folder / "00000.jpg") as img:
        np.testing.assert_array_equal(frames[0], np.asarray(img.convert("RGB")))
    window = next(iter_video_windows(folder, length=3, start=10))
    assert window.names == ["00010", "00011", "00012"]
    assert window.frames.shape == (3, 480, 854, 3)


def test_real_frames_survive_mp4_and_gif(assets, tmp_path):
    folder = assets / "davis-real" / "JPEGImages" / "480p" / "blackswan"
    frames = [np.asarray(Image.fromarray(f).resize((214, 120))) for _, f in
              iter_video_frames(folder, stop=30, step=10)]
    for name, tolerance in (("real.mp4", 6.0), ("real.gif", 6.0)):
        path = write(tmp_path / name, frames, fps=8.0)
        for (_, got), src in zip(iter_video_frames(path), frames):
            assert mean_abs(got[:120, :214], src) < tolerance
