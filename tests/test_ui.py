"""`diffkit ui` in a real browser (Debian's chromium, driven by Playwright): forms from the plugins'
declarations, a run whose samples equal the shown command's, a painted mask, a third-party plugin's
form, errors as messages, and no way for a page to read server files."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("gradio")
playwright = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (apt-get install -y chromium)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, out: Path, env: dict | None = None, extra: list[str] = ()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.out = out
        self.proc = subprocess.Popen([sys.executable, "-m", "diffkit", "ui", "--port", str(self.port), "--out",
                                      str(out), *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", **(env or {})))
        end = time.monotonic() + 120
        while time.monotonic() < end:
            try:
                urllib.request.urlopen(self.url, timeout=2)
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(self.proc.stdout.read())
                time.sleep(0.3)
        raise RuntimeError("diffkit ui did not start")

    def stop(self) -> str:
        self.proc.terminate()
        try:
            return self.proc.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return ""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("ui") / "out")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    pg = browser.new_page(viewport={"width": 1400, "height": 1800})
    pg.goto(server.url)
    pg.wait_for_selector("#run")
    yield pg
    pg.close()


def choose(page, elem_id: str, option: str) -> None:
    """Pick ``option`` in the Gradio dropdown ``elem_id``."""
    page.click(f"#{elem_id} input")
    page.get_by_role("option", name=option, exact=True).click()


def add_technique(page, name: str) -> None:
    n = page.locator("[id^=title-]").count()
    choose(page, "pick", name)
    page.click("#add")
    page.wait_for_selector(f"#title-{n}")


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def run_and_wait(page, count: int, timeout: float = 240_000) -> str:
    page.click("#run")
    page.wait_for_function(f"document.querySelectorAll('#gallery img').length >= {count}", timeout=timeout)
    page.wait_for_function("document.querySelector('#command textarea').value.length > 0")
    return page.locator("#command textarea").input_value()


def ui_folder(page) -> Path:
    """The run folder the page wrote, as its status line says."""
    status = page.locator("#status").inner_text().strip()
    assert status.startswith("done:"), status
    return Path(status.split(" samples in ", 1)[1])


def run_command(cmd: str, cwd: Path) -> Path:
    """The page's command, run as shown (its --out is relative: the run's name, where the user is)."""
    args = shlex.split(cmd)
    assert args[:2] == ["diffkit", "sample"]
    out = cwd / args[args.index("--out") + 1]
    assert not Path(args[args.index("--out") + 1]).is_absolute()
    p = subprocess.run([sys.executable, "-m", "diffkit", *args[1:]], cwd=cwd, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr
    return out


def test_mnist_class_3_with_cfg_5_equals_the_shown_command(page, server, tmp_path):
    page.locator("#labels textarea").fill("3")
    set_number(page, "num", 4)
    set_number(page, "steps", 30)
    add_technique(page, "cfg")
    set_number(page, "p0-scale", 5)
    cmd = run_and_wait(page, 4)
    assert "--technique cfg:scale=5" in cmd and "--class 3" in cmd and "--num 4" in cmd, cmd
    ui_out = ui_folder(page)
    assert ui_out.parent == server.out and (ui_out / "run.json").is_file() and Path(f"{ui_out}.zip").is_file()
    cli_out = run_command(cmd, tmp_path)
    for i in range(4):
        name = f"sample-{i:03d}.png"
        assert (cli_out / name).read_bytes() == (ui_out / name).read_bytes(), name
    assert "seed 3" in page.locator("#gallery").inner_text()  # captions: label and seed
    # the zip the page offers is the run folder
    import io as _io
    import zipfile

    href = page.locator("#zip a").first.get_attribute("href")
    body = urllib.request.urlopen(href if href.startswith("http") else server.url + href.lstrip("/"), timeout=10).read()
    names = set(zipfile.ZipFile(_io.BytesIO(body)).namelist())
    assert {"sample-000.png", "sample-003.png", "grid.png", "run.json", "command.txt"} <= names, names
    # docs/make_figures.sh sets this to docs/img/ui.png
    page.screenshot(path=os.environ.get("DIFFKIT_UI_SCREENSHOT", str(tmp_path / "ui.png")))


def test_a_painted_mask_inpaints_and_keeps_the_rest(page, server, tmp_path):
    from PIL import Image

    digit = tmp_path / "digit.png"
    Image.new("L", (28, 28), 0).save(digit)  # all black: what is kept stays black
    add_technique(page, "inpaint")
    page.set_input_files("#p0-image input[type=file]", str(digit))
    page.locator("#p0-mask canvas").first.wait_for()
    page.locator("#p0-mask button[aria-label=Brush]").click()
    box = page.locator("#p0-mask canvas").first.bounding_box()
    # the digit is drawn centred, about 0.8 of the canvas's height across: paint its left third
    cx, cy, size = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, 0.8 * min(box["width"], box["height"])
    for k in range(14):
        y = cy - 0.45 * size + k * 0.07 * size
        page.mouse.move(cx - 0.4 * size, y)
        page.mouse.down()
        page.mouse.move(cx - 0.2 * size, y, steps=4)
        page.mouse.up()
    set_number(page, "num", 1)
    set_number(page, "steps", 20)
    cmd = run_and_wait(page, 1)
    assert "--technique inpaint:" in cmd
    ui_out = ui_folder(page)
    mask = next((ui_out / "inputs").glob("mask-*.png"))
    m = Image.open(mask).convert("L")
    assert m.getpixel((m.width // 5, m.height // 2)) == 255 and m.getpixel((3 * m.width // 4, m.height // 2)) == 0
    sample = Image.open(ui_out / "sample-000.png")
    right = [sample.getpixel((x, y)) for x in range(20, 28) for y in range(28)]
    assert max(right) == 0  # the kept (unpainted) region is the black original


def test_a_bad_parameter_is_a_message_and_the_app_keeps_serving(page, server):
    add_technique(page, "hybrid")  # its prompt is required
    page.click("#run")
    page.wait_for_selector("text=required", timeout=60_000)
    assert "Traceback" not in page.content()
    urllib.request.urlopen(server.url, timeout=5)  # still serving


def test_the_third_party_plugin_gets_its_form(browser, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(target), str(ROOT / "examples" / "diffkit-negative-prompt")], check=True)
    s = Server(tmp_path / "out", env={"PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])})
    try:
        pg = browser.new_page()
        pg.goto(s.url)
        pg.wait_for_selector("#run")
        add_technique(pg, "negative")
        pg.wait_for_selector("#p0-prompt textarea, #p0-prompt input")
        assert pg.locator("#p0-scale input[type=number]").input_value() == "7"
        pg.close()
    finally:
        s.stop()


def listeners(port: int) -> list[str]:
    """Local addresses (kernel hex) of the sockets listening on ``port``, from /proc/net/tcp and tcp6."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in open(table).read().splitlines()[1:]:
            fields = line.split()
            addr, hexport = fields[1].split(":")
            if fields[3] == "0A" and int(hexport, 16) == port:
                found.append(addr)
    if not found and not os.path.exists("/proc/net/tcp"):
        pytest.skip("no /proc/net/tcp here")
    return found


def test_the_server_listens_on_localhost_and_serves_no_file_outside_its_output(server, tmp_path):
    listening = listeners(server.port)
    assert listening and set(listening) <= {"0100007F", "00000000000000000000000001000000"}, listening  # loopback only
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the browser")
    for url in (f"{server.url}gradio_api/file={secret}", f"{server.url}file={secret}",
                f"{server.url}gradio_api/file=/etc/passwd"):
        try:
            body = urllib.request.urlopen(url, timeout=5).read().decode(errors="replace")
        except OSError:
            continue
        assert "not for the browser" not in body and "root:" not in body


def test_the_sketch_pad_draws_sdedits_image(page, server):
    from PIL import Image

    add_technique(page, "sdedit")
    page.locator("#p0-image canvas").first.wait_for()
    page.locator("#p0-image button[aria-label=Brush]").click()
    box = page.locator("#p0-image canvas").first.bounding_box()
    cx, cy, size = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, 0.8 * min(box["width"], box["height"])
    page.mouse.move(cx - 0.3 * size, cy - 0.3 * size)
    page.mouse.down()
    page.mouse.move(cx + 0.3 * size, cy + 0.3 * size, steps=10)  # a black diagonal on the white pad
    page.mouse.up()
    set_number(page, "num", 1)
    set_number(page, "steps", 10)
    set_number(page, "p0-i_start", 5)
    cmd = run_and_wait(page, 1)
    assert "--technique sdedit:" in cmd and "i_start=5" in cmd, cmd
    ui_out = ui_folder(page)
    drawn = Image.open(next((ui_out / "inputs").glob("image-*.png"))).convert("L")
    w, h = drawn.size
    assert drawn.getpixel((w // 2, h // 2)) < 64 and drawn.getpixel((w // 10, 9 * h // 10)) > 192
    # the page's uploads go when the page is closed (Gradio's unload event)
    sessions = list((server.out / ".uploads").glob("session-*/image-*.png"))
    assert sessions, list(server.out.rglob("*"))
    page.close()
    end = time.monotonic() + 90
    while any(p.exists() for p in sessions) and time.monotonic() < end:
        time.sleep(0.5)
    assert not any(p.exists() for p in sessions)


def test_stop_ends_a_run_and_writes_nothing(page, server):
    before = set(server.out.glob("run-*"))
    add_technique(page, "sdedit")  # its image is copied into the run folder before sampling begins
    page.locator("#p0-image canvas").first.wait_for()
    # one batch of 64 (ui.BATCH) through 300 steps: Stop must land before the batch ends, or its samples are kept
    # for Resume, as they should be (CI once saw 20 samples finish before the click arrived)
    set_number(page, "num", 64)
    set_number(page, "steps", 300)
    page.click("#run")
    page.wait_for_function("document.querySelector('#status').innerText.includes(' of 300')", timeout=60_000)
    assert list((server.out).glob("run-*/inputs/image-*.png"))  # the run had begun: its input is in place
    page.click("#stop")
    # the run, after the step in progress, tidies its half folder and says "stopped" as its last update
    page.wait_for_function("document.querySelector('#status').innerText.includes('stopped')", timeout=60_000)
    assert set(server.out.glob("run-*")) == before
    time.sleep(1.5)  # nothing of the run comes after it (Gradio's cancels let a step's update overwrite it)
    assert "stopped" in page.locator("#status").inner_text()
    urllib.request.urlopen(server.url, timeout=5)


def test_the_stack_reorders_and_removes_and_the_command_follows(page):
    add_technique(page, "cfg")
    add_technique(page, "anagram")
    titles = lambda: [page.locator(f"#title-{k}").inner_text().split(" (")[0] for k in range(
        page.locator("[id^=title-]").count())]
    assert titles() == ["1. cfg", "2. anagram"]
    page.click("#down-0")
    page.wait_for_function("document.querySelector('#title-0').innerText.includes('anagram')")
    assert titles() == ["1. anagram", "2. cfg"]
    page.locator("#p0-prompt textarea").fill("7")
    page.locator("#p0-prompt textarea").press("Tab")
    set_number(page, "num", 1)
    set_number(page, "steps", 5)
    cmd = run_and_wait(page, 1)
    assert cmd.index("--technique anagram:prompt=7") < cmd.index("--technique cfg"), cmd
    page.click("#remove-0")
    page.wait_for_function("document.querySelectorAll('[id^=title-]').length == 1")
    assert titles() == ["1. cfg"]


# ---- what one request may ask of the server (issue 21) ----

def test_a_request_for_too_many_samples_is_a_message_and_nothing_is_made(page, server):
    before = set(server.out.glob("run-*"))
    page.locator("#labels textarea").fill("3," * 5000)
    set_number(page, "num", 200)
    page.click("#run")
    page.wait_for_function("document.body.innerText.includes('this server makes at most 256')", timeout=60_000)
    assert "1,000,000 samples asked (5,000 labels x 200)" in page.locator("body").inner_text()
    assert set(server.out.glob("run-*")) == before
    # The page's default steps (0: the backend's) passed Gradio's own check on the way: with a minimum of
    # 1 it refused "Value 0 is less than minimum value 1" before the request reached diffkit.
    assert page.locator("#steps input[type=number]").input_value() == "0"


def test_an_upload_over_the_limit_is_refused(tmp_path):
    import httpx

    s = Server(tmp_path / "out", extra=["--max-upload-mb", "1"])
    try:
        small = httpx.post(f"{s.url}gradio_api/upload", files={"files": ("a.png", b"x" * 1000)}, timeout=30)
        big = httpx.post(f"{s.url}gradio_api/upload", files={"files": ("b.png", b"x" * 2_000_000)}, timeout=30)
        assert small.status_code == 200 and big.status_code == 413, (small.text, big.text)
        assert "maximum allowed size" in big.text
    finally:
        s.stop()


def test_auth_asks_for_a_login(tmp_path):
    import httpx

    s = Server(tmp_path / "out", extra=["--auth", "ada:secret"])
    try:
        assert httpx.get(f"{s.url}gradio_api/login_check", timeout=10).status_code == 401
        assert httpx.post(f"{s.url}gradio_api/upload", files={"files": ("a.png", b"x")}, timeout=10).status_code == 401
        bad = httpx.post(f"{s.url}login", data={"username": "ada", "password": "guess"}, timeout=10)
        assert bad.status_code == 400
        with httpx.Client(base_url=s.url, timeout=10) as c:
            assert c.post("login", data={"username": "ada", "password": "secret"}).status_code == 200
            assert c.get("gradio_api/login_check").status_code == 200
    finally:
        s.stop()


def test_an_interrupted_run_is_offered_and_resumed_from_the_page(page, server, tmp_path):
    """A run cut short (here by the API, as a killed server would leave it: one of two batches written)
    appears under "interrupted runs"; Resume finishes it, with the bytes of an uninterrupted run."""
    from diffkit import api

    kw = dict(classes=["3", "5"], num=2, hooks=["cfg:3"], steps=4, sampler="ddim", seed=7)
    name = "run-00000000-resume-test"
    job = api.FolderRun(server.out / name, "mnist", batch_size=2, **kw)
    steps = job.steps()
    for ev in steps:
        if ev.state is None:
            break
    steps.close()
    assert job.kept.startswith("2 of 4 samples are kept")
    whole = api.sample_to(tmp_path / "whole", "mnist", **kw)
    page.reload()
    page.wait_for_selector("#resume")
    choose(page, "resumable", name)
    page.click("#resume")
    page.wait_for_function("document.querySelectorAll('#gallery img').length >= 4", timeout=240_000)
    assert ui_folder(page) == server.out / name
    for f in ("sample-000.png", "sample-003.png", "final.safetensors"):
        assert (server.out / name / f).read_bytes() == (whole / f).read_bytes(), f
