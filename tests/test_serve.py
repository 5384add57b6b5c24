"""rvos serve: the app's segmenting function (good and bad uploads), the command's errors, and
the whole web demo driven end to end in a real headless Chromium."""

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from contextlib import contextmanager
from pathlib import Path

import av
import numpy as np
import pytest

from rvos.cli import main
from rvos.config import load_config
from rvos.data.video_io import VideoWriter
from rvos.engine.checkpoint import save_checkpoint
from rvos.errors import RVOSError
from rvos.serve import GALLERY_FRAMES, Segmenter, _public_message, write_examples
from rvos.viz import compose_overlay_frame, sentence_colors

REPO = Path(__file__).resolve().parents[1]
CLIP_FRAMES, CLIP_SIZE = 6, (48, 64)
CHROMIUM = [shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")]
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A real (untrained) tiny baseline checkpoint."""
    from rvos.models.build import build_model

    cfg = load_config(None, ["model.baseline.dim=32", "model.baseline.heads=2",
                             "data.input_size=[32,32]"])
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "model", build_model(cfg), cfg,
                           {"step": 0})


@pytest.fixture(scope="module")
def segmenter(tiny_checkpoint, tmp_path_factory):
    from rvos.inference import Predictor

    predictor = Predictor.from_checkpoint(tiny_checkpoint, "cpu")
    return Segmenter(predictor, tmp_path_factory.mktemp("app"), max_frames=50)


def write_clip(path, frames=CLIP_FRAMES, size=CLIP_SIZE):
    """A tiny MP4 of a white square moving right on grey, made with rvos's own writer."""
    height, width = size
    with VideoWriter(path, fps=5) as writer:
        for t in range(frames):
            frame = np.full((height, width, 3), 90, np.uint8)
            frame[16:32, 4 + 6 * t:20 + 6 * t] = 255
            writer.write(frame)
    return path


def decode(data_or_path):
    """Frames of an MP4 (a path or bytes) as (H, W, 3) arrays."""
    source = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else str(data_or_path)
    with av.open(source) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def overlay_shape(sentences):
    """The size rvos's overlay gives a CLIP_SIZE video with these sentences."""
    frame = np.zeros((*CLIP_SIZE, 3), np.uint8)
    masks = np.zeros((len(sentences), *CLIP_SIZE), bool)
    return compose_overlay_frame(frame, masks, list(zip(sentences,
                                                        sentence_colors(len(sentences))))).shape


def mask_names(archive: zipfile.ZipFile, k: int) -> list[str]:
    return sorted(n for n in archive.namelist() if n.startswith(f"masks/{k}/") and n.endswith(".png"))


# ----------------------------------------------------------------------------- the app's function
def test_a_good_video_gives_the_overlay_and_the_masks(segmenter, tmp_path):
    clip = write_clip(tmp_path / "clip.mp4")
    result = segmenter.segment(clip, "the white square\n\n  the grey background  \n")
    frames = decode(result.overlay)
    assert len(frames) == CLIP_FRAMES
    assert frames[0].shape == overlay_shape(["the white square", "the grey background"])
    with zipfile.ZipFile(result.masks_zip) as archive:
        assert "expressions.json" in archive.namelist()
        for k in (0, 1):
            names = mask_names(archive, k)
            assert names == [f"masks/{k}/{i:05d}.png" for i in range(CLIP_FRAMES)]
            with archive.open(names[0]) as png:
                from PIL import Image
                assert Image.open(png).size == CLIP_SIZE[::-1]
    assert 0 < len(result.gallery) <= 2 * GALLERY_FRAMES
    assert all(path.is_file() and "] the " in caption for path, caption in result.gallery)
    assert f"{CLIP_FRAMES} frames" in result.summary and "the grey background" in result.summary
    assert result.warnings == []


def test_a_damaged_upload_gets_a_warning(segmenter, tmp_path, monkeypatch):
    import warnings

    import rvos.serve
    from rvos.data.video_io import IncompleteVideoWarning

    def damaged(predictor, video, *args, **kwargs):
        warnings.warn(f"{video}: decoded 5 frames but its container lists 6", IncompleteVideoWarning)
        return real(predictor, video, *args, **kwargs)

    real = rvos.serve.segment_video
    monkeypatch.setattr(rvos.serve, "segment_video", damaged)
    clip = write_clip(tmp_path / "clip.mp4")
    result = segmenter.segment(clip, "x")
    assert result.warnings == ["clip.mp4: decoded 5 frames but its container lists 6"]
    assert "**Warning:** clip.mp4: decoded 5" in result.summary


@pytest.mark.parametrize("name, content, text, message", [
    (None, None, "a", "upload a video (or pick an example) first"),
    ("clip.mp4", "good", " \n ", "type at least one sentence"),
    ("clip.mp4", "good", "\n".join("abcdefghi"), "at most 8 per run"),
    ("notes.txt", b"hello", "a", "not a video file (expected .mp4"),
    ("empty.mp4", b"", "a", "the uploaded file is empty"),
    ("noise.mp4", bytes(range(256)) * 40, "a", "cannot open as a video"),
    ("long.mp4", "long", "a", "video has 60 frames; this server takes at most 50"),
])
def test_a_bad_upload_gets_a_clear_message(segmenter, tmp_path, name, content, text, message):
    video = None
    if name is not None:
        video = tmp_path / "upload-folder" / name
        video.parent.mkdir()
        if content == "good":
            write_clip(video)
        elif content == "long":
            write_clip(video, frames=60, size=(16, 16))
        else:
            video.write_bytes(content)
    with pytest.raises(RVOSError) as error:
        segmenter.segment(video, text)
    shown = _public_message(error.value)
    assert message in shown
    assert "upload-folder" not in shown          # the server's paths are not shown


def test_old_runs_are_removed(segmenter, tmp_path, monkeypatch):
    monkeypatch.setattr("rvos.serve.KEEP_RUNS", 2)
    clip = write_clip(tmp_path / "clip.mp4", frames=1, size=(16, 16))
    last = [segmenter.segment(clip, "x").overlay for _ in range(3)]
    assert sorted(segmenter.runs.iterdir()) == [p.parents[1] for p in last[1:]]


def test_bundled_examples_are_synthetic_videos_with_sentences(tmp_path):
    examples = write_examples(tmp_path, count=1)
    (path, text), = examples
    assert path.parent == tmp_path and len(decode(path)) >= 5
    assert text.count("\n") == 1 and all(line.strip() for line in text.splitlines())


# ----------------------------------------------------------------------------- the command
def test_serve_without_a_checkpoint_or_gradio(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as done:
        main(["serve", "--help"])
    assert done.value.code == 0 and "--max-frames" in capsys.readouterr().out

    code = main(["serve", "--checkpoint", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == 2 and "checkpoint not found" in err and err.count("\n") == 1

    import importlib.util
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gradio" else real_find_spec(name, *a))
    code = main(["serve", "--checkpoint", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'rvos[serve]'" in err


# ----------------------------------------------------------------------------- in a browser
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(proc, url, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"rvos serve exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"rvos serve did not answer at {url} within {timeout:.0f} s")


def fetch(url) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


@contextmanager
def rvos_serve(checkpoint, tmp_path):
    """`rvos serve` in a subprocess on a free port, with its own TMPDIR and working folder;
    stopped (SIGTERM, then kill) whatever happens. Yields its URL. On a clean stop it must
    exit with 0 and leave both folders empty."""
    tmpdir, cwd = tmp_path / "server-tmp", tmp_path / "server-cwd"
    tmpdir.mkdir()
    cwd.mkdir()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmpdir),
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rvos.cli", "serve", "--checkpoint",
                             str(checkpoint), "--port", str(port), "--device", "cpu",
                             "--max-frames", "50"],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for_server(proc, url)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log = proc.stdout.read()
    assert proc.returncode == 0, log
    assert f"files in {tmpdir}" in log
    assert list(tmpdir.iterdir()) == [] and list(cwd.iterdir()) == [], log


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium through chromedriver (skips only when either is not installed)."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    chromium = next((path for path in CHROMIUM if path), None)
    if chromium is None or CHROMEDRIVER is None:
        pytest.skip("Chromium and chromedriver are needed (Debian: apt-get install chromium "
                    "chromium-driver; scripts/setup.sh does it when it runs as root)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,1700",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def test_the_web_demo_in_a_browser(tiny_checkpoint, browser, tmp_path):
    with rvos_serve(tiny_checkpoint, tmp_path) as url:
        use_the_page(browser, url, tmp_path)
    assert (tmp_path / "serve_screenshot.png").stat().st_size > 0


def use_the_page(browser, url, tmp_path):
    """Load the page, try a broken upload, then segment a clip and check what comes back."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60, poll_frequency=0.2)
    browser.get(url)
    run = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#run"))
    # the page is whole without the internet: every resource came from the server
    resources = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(r.startswith(url) for r in resources), resources

    def upload(path):
        browser.find_element(By.CSS_SELECTOR, "#input-video input[type=file]").send_keys(str(path))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#input-video video"))

    # a bad upload: a visible message, not a traceback
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(bytes(range(256)) * 40)
    browser.find_element(By.CSS_SELECTOR, "#input-video input[type=file]").send_keys(str(bad))
    time.sleep(1)   # let the upload land (the browser cannot preview it, so no <video> shows)
    browser.find_element(By.CSS_SELECTOR, "#sentences textarea").send_keys("the white square")
    run.click()
    toast = wait.until(lambda d: next((e for e in d.find_elements(By.CSS_SELECTOR, ".toast-body")
                                       if "cannot open as a video" in e.text), None))
    assert "broken.mp4" in toast.text and "Traceback" not in toast.text
    for close in browser.find_elements(By.CSS_SELECTOR, ".toast-close"):
        close.click()
    browser.find_element(By.CSS_SELECTOR, "#input-video button[aria-label='Clear']").click()

    clip = write_clip(tmp_path / "clip.mp4")
    upload(clip)
    run.click()
    overlay = wait.until(lambda d: next((e for e in d.find_elements(By.CSS_SELECTOR, "#overlay video")
                                         if e.get_attribute("src")), None))
    # the browser plays it: its metadata loads and it has a picture
    width = wait.until(lambda d: d.execute_script(
        "const v = arguments[0]; return v.readyState >= 1 && !v.error && v.videoWidth", overlay))
    expected = overlay_shape(["the white square"])
    assert width == expected[1]
    frames = decode(fetch(overlay.get_attribute("src")))
    assert len(frames) == CLIP_FRAMES and frames[0].shape == expected

    link = wait.until(lambda d: next((e for e in d.find_elements(By.CSS_SELECTOR, "#masks a")
                                      if (e.get_attribute("href") or "").endswith(".zip")), None))
    with zipfile.ZipFile(io.BytesIO(fetch(link.get_attribute("href")))) as archive:
        assert mask_names(archive, 0) == [f"masks/0/{i:05d}.png" for i in range(CLIP_FRAMES)]
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery img")) >= 1)
    assert f"{CLIP_FRAMES} frames" in browser.find_element(By.CSS_SELECTOR, "#summary").text
    browser.save_screenshot(str(tmp_path / "serve_screenshot.png"))
    if os.environ.get("RVOS_SCREENSHOT"):       # for the docs: RVOS_SCREENSHOT=path pytest ...
        browser.save_screenshot(os.environ["RVOS_SCREENSHOT"])
