"""The tutorials, top to bottom, in a student's real session (hub, proxy, quota service,
apps service; the `local` backend, CPU profile), at the small size (tests/notebooks/
session.py says how they are run). The student's new home got them from [tutorials]."""

from __future__ import annotations

import html
import json
import re
import stat
import subprocess
from pathlib import Path
from urllib.parse import urlencode

import pytest
import requests

from tests.integration.apps_kit import open_app

from .conftest import TUTORIALS
from .parameters import NOTEBOOKS
from .session import run_notebook

pytestmark = pytest.mark.integration

USER = "tess"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="module")
def student(hub):
    hub.new_user(USER)
    hub.spawn(USER, "cpu")
    hub.wait_ready(USER)
    return hub.token_for(USER)


@pytest.fixture(scope="module")
def trained(hub, student):
    """Notebook 2, once: notebook 4 builds its app on the model it saves."""
    return run_notebook(hub, USER, student, "tutorials/02-train-on-a-gpu.ipynb", size="small")


def test_a_new_home_gets_the_chosen_tutorials(hub, student):
    r = hub.api("GET", f"/users/{USER}")  # the session is up, so the home was made
    assert r.json()["servers"][""]["ready"]
    folder = hub.homes / f"{hub.prefix}{USER}" / "tutorials"
    if not hub.isolated:
        pytest.skip("not root: homes are not made by the workbench's useradd")
    assert sorted(p.name for p in folder.iterdir()) == sorted(TUTORIALS)
    account = folder.parent.stat()
    for p in (folder, *folder.iterdir()):
        st = p.stat()
        assert (st.st_uid, st.st_gid) == (account.st_uid, account.st_gid), p
    assert stat.S_IMODE(account.st_mode) == 0o700


def test_01_welcome_shows_session_gpus_quota_and_files(hub, student):
    run = run_notebook(hub, USER, student, "tutorials/01-welcome.ipynb")
    text = run.text
    assert f"hub user: {USER}" in text and "profile: cpu" in text and "cores: 2" in text
    assert "CUDA_VISIBLE_DEVICES = ''" in text and "No GPU in this session" in text
    # The quota service answered through the session's own token.
    assert f"Quota of {USER} (account default)" in text, text
    assert "gpu_hours:" in text and "cpu_hours:" in text
    assert "tutorials here: 01-welcome.ipynb, 02-train-on-a-gpu.ipynb" in text
    assert "Stop My Server" not in text  # markdown is not run, only shown


def test_02_trains_on_the_cpu_with_checkpoints_plot_and_saved_model(hub, trained):
    text = trained.text
    assert "device: CPU · size small" in text and "compile: False" in text
    assert "epoch 2: validation loss" in text
    assert "image/png" in trained.mimetypes()  # the example images and the loss plot
    assert "application/vnd.jupyter.widget-view+json" in trained.mimetypes()  # tqdm's bar
    tutorials = hub.homes / f"{hub.prefix}{USER}" / "tutorials" if hub.isolated else None
    if tutorials is None:
        pytest.skip("not root: the home's path is the hub account's")
    metrics = json.loads((tutorials / "runs/shapes/metrics.json").read_text())
    assert metrics["device"] == "cpu" and metrics["epochs"] == 2
    assert metrics["samples_per_s"] > 0 and metrics["train_flops_per_sample"] > 1e6
    assert metrics["val_accuracy"] > 0.35  # five classes: chance is 0.2
    losses = metrics["history"]["train_loss"]
    assert losses[-1] < losses[0]
    assert (tutorials / "runs/shapes/checkpoints/last.pt").is_file()
    model = tutorials / "models/shapes.pt"
    assert model.is_file() and model.stat().st_uid == tutorials.stat().st_uid


def test_03_dask_on_the_local_backend_partitions_searches_and_shows_charges(hub, student):
    run = run_notebook(hub, USER, student, "tutorials/03-scale-out-with-dask.ipynb", size="small")
    text = run.text
    assert "backend local · 2 workers with 0 GPU(s) each" in text
    assert f"dashboard: /user/{USER}/proxy/" in text  # through jupyter-server-proxy
    assert "2048 images in 4 partitions" in text and "per-channel mean" in text
    assert "4 trials in" in text and "best: {'lr'" in text
    assert "worker jobs: none (workers were processes of this session)" in text
    # The session's own charges, from the usage API, then the balance.
    assert "(this session): " in text and "cpu-seconds" in text
    assert f"Quota of {USER} (account default)" in text
    folder = hub.homes / f"{hub.prefix}{USER}" / "tutorials" / "data" / "shapes-parts"
    if hub.isolated:
        assert sorted(p.name for p in folder.iterdir()) == [f"part-00{i}.npz" for i in range(4)]


def test_04_builds_the_app_on_notebook_2s_model_and_publishes_it(hub, student, trained):
    hub.new_user("vera")
    run = run_notebook(
        hub, USER, student, "tutorials/04-share-a-voila-app.ipynb", share_with=["vera"]
    )
    text = run.text
    assert "ShapeNet(width=8) from models/shapes.pt" in text
    assert "application/vnd.jupyter.widget-view+json" in run.mimetypes()
    assert "circle: The model sees a" in text and "diamond: The model sees a" in text
    assert "wrote shapes-app.ipynb, with shapes.py, shapes_app.py, models/shapes.pt" in text
    assert f"published {USER}/shapes (4 files)" in text, text
    assert "who may open it: vera" in text
    # vera signs in and opens the app; no code is shown.
    vera = hub.login("vera", "correct-horse-9")
    r = open_app(vera, f"{hub.url}/services/apps/open/{USER}/shapes")
    assert r.status_code == 200, (r.status_code, r.url, r.text[-500:])
    # Voila ran the app notebook: the interface is there as a widget (its state reaches the
    # browser over the kernel's websocket), and no cell failed.
    assert "Which shape is it?" in r.text
    assert "application/vnd.jupyter.widget-view+json" in r.text
    assert "Dropdown(description=\\u0027shape\\u0027" in r.text
    assert '"output_type": "error"' not in r.text
    assert "load_model" not in r.text  # sources are not shown


def test_an_nbgitpuller_link_pulls_a_course_into_the_session(hub, student):
    """A teacher's link, in the format notebooks/README.md gives, pulls their repository
    into the student's home and opens a notebook from it."""
    course = hub.base / "course"  # the folder a pull makes is named like the repository
    work = hub.base / "course-work"
    work.mkdir()
    (work / "lab1.ipynb").write_bytes((NOTEBOOKS / "01-welcome.ipynb").read_bytes())
    git = ["git", "-c", "user.name=Teacher", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q", "-b", "main", str(work)], check=True)
    subprocess.run([*git, "-C", str(work), "add", "lab1.ipynb"], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-qm", "lab 1"], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(course)], check=True)
    if hub.isolated:  # git refuses a repository owned by another account (safe.directory)
        subprocess.run(["chown", "-R", f"{hub.prefix}{USER}", str(course)], check=True)
    query = urlencode(
        {"repo": f"file://{course}", "branch": "main", "urlpath": "lab/tree/course/lab1.ipynb"}
    )
    # The link: the hub sends a signed-in student through their spawn page (a running
    # server passes straight on) to their own server's /git-pull page.
    s = hub.login(USER, "correct-horse-9")
    r = s.get(f"{hub.url}/hub/user-redirect/git-pull?{query}")
    # On its own origin the hub bounces the student once through the hub's host to the
    # user's (JupyterHub 6.1.1 marks that hop with `redirects=1`), then the server answers.
    landed = r.url.replace("&redirects=1", "")
    assert r.status_code == 200 and landed == f"{hub.user_url(USER)}git-pull?{query}", r.url
    assert "nbgitpuller" in r.text
    # That page runs the pull through the session's event stream, then opens urlpath.
    r = requests.get(
        f"{hub.user_url(USER)}git-pull/api?{query}",
        headers={"Authorization": f"token {student}"}, stream=True, timeout=120,
    )  # fmt: skip
    events = [json.loads(line[5:]) for line in r.iter_lines(decode_unicode=True)
              if line.startswith("data:")]  # fmt: skip
    assert events[-1]["phase"] == "finished", events
    r = requests.get(
        f"{hub.user_url(USER)}api/contents/course/lab1.ipynb",
        headers={"Authorization": f"token {student}"}, timeout=60,
    )  # fmt: skip
    assert r.status_code == 200 and r.json()["type"] == "notebook"


# --- the same tutorials in Chinese, in the session of a student who chose 中文 -------------

CHINESE = "lin"
SHAPES_IN_CHINESE = {"circle": "圆形", "square": "正方形", "triangle": "三角形", "plus": "十字",
                     "diamond": "菱形"}  # fmt: skip


@pytest.fixture(scope="module")
def chinese_student(hub):
    """lin chose 中文 on the hub before her first session: her new home gets the zh-CN
    tutorials and her session speaks Chinese (SHANGZHUANG_LANGUAGE)."""
    s = hub.new_user(CHINESE)
    r = hub.form(s, "/hub/language", {"language": "zh_CN"}, allow_redirects=False)
    assert r.status_code == 302, r.status_code
    hub.spawn(CHINESE, "cpu")
    hub.wait_ready(CHINESE)
    return hub.token_for(CHINESE)


@pytest.fixture(scope="module")
def trained_in_chinese(hub, chinese_student):
    """The Chinese notebook 2, once: lin's notebook 4 builds its app on her own model. One
    epoch of 512 images (the English run trains 2 of 2048 and checks that the model learns):
    what is checked here is what a Chinese reader sees, which no size changes."""
    path = "tutorials/02-train-on-a-gpu.ipynb"
    return run_notebook(
        hub, CHINESE, chinese_student, path, size="small", epochs=1, train_samples=512
    )


def test_a_chinese_student_gets_chinese_tutorials_and_a_chinese_lab(hub, chinese_student):
    """A student who chose 中文 on the hub: the new home gets the zh-CN tutorials (shapes.py,
    untranslated, as it is), the session's Lab defaults to Chinese with our catalog served and
    no news prompt, and tutorial 01 runs there."""
    token = chinese_student
    base, headers = hub.user_url("lin"), {"Authorization": f"token {token}"}

    def get(path: str) -> dict:
        r = requests.get(f"{base}{path}", headers=headers, timeout=60)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
        return r.json()

    welcome = get("api/contents/tutorials/01-welcome.ipynb")["content"]
    assert welcome["cells"][0]["source"].startswith("# 1. 欢迎使用上庄工作台")
    assert "def make_shapes" in get("api/contents/tutorials/shapes.py")["content"]
    # What the Lab reads at start (session.py's defaults, through Lab's own settings API).
    locale = get("lab/api/settings/@jupyterlab/translation-extension:plugin")["schema"]
    assert locale["properties"]["locale"]["default"] == "zh_CN"
    news = get("lab/api/settings/@jupyterlab/apputils-extension:notification")["schema"]
    assert news["properties"]["fetchNews"]["default"] == "false"
    # The language pack and our catalog, as the Lab's translator fetches them.
    catalog = get("lab/api/translations/zh_CN")["data"]
    assert catalog["shangzhuang_lab"]["%1 left"] == ["剩余 %1"]
    assert "jupyterlab" in catalog  # the zh-CN language pack's own

    run = run_notebook(hub, "lin", token, "tutorials/01-welcome.ipynb")
    # The session's language reaches the notebook helpers too (shangzhuang.quota()'s report).
    assert "hub user: lin" in run.text and "lin 的配额（计费账户 default）" in run.text, run.text
    assert "tutorials here: 01-welcome.ipynb, 02-train-on-a-gpu.ipynb" in run.text


def test_zh_02_trains_and_says_so_in_chinese_with_chinese_plot_labels(hub, trained_in_chinese):
    """What a Chinese reader sees of notebook 2: its printed lines in Chinese, and the loss
    plot's labels (训练, 验证, 步数, 损失) drawn in CJK glyphs: matplotlib warns "Glyph ...
    missing from font(s) DejaVu Sans" on the cell's stderr when a font lacks them (as it
    does without the sessions' matplotlibrc). The PNGs go to test-artifacts/ to look at."""
    text = trained_in_chinese.text
    assert "设备：CPU · 规模 small：1 个 epoch，每个 512 张图像" in text, text
    assert "编译：False" in text and "512 张训练图像" in text and "每个 epoch 8 批" in text
    assert "个参数" in text and "epoch 1：验证损失" in text and "准确率" in text
    assert "张图像 · 模型" in text and "验证准确率" in text
    assert "已保存 models/shapes.pt" in text
    assert "missing from font" not in text, text
    pngs = trained_in_chinese.pngs()
    assert len(pngs) >= 2  # the example images and the loss plot (then its updates)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "tutorial-zh-02-examples.png").write_bytes(pngs[0])
    (ARTIFACTS / "tutorial-zh-02-loss.png").write_bytes(pngs[-1])


def test_zh_03_runs_dask_and_reports_charges_in_chinese(hub, chinese_student):
    """Notebook 3 on a quarter of the English run's images (64 a partition): its lines and
    the charges it reads back are what is checked here, the same for any size."""
    path = "tutorials/03-scale-out-with-dask.ipynb"
    run = run_notebook(hub, CHINESE, chinese_student, path, size="small", images_per_partition=64)
    text = run.text
    assert "后端 local · 2 个 worker，每个 0 块 GPU · 4 个分区" in text, text
    assert f"dashboard： /user/{CHINESE}/proxy/" in text
    assert "512 张图像，4 个分区" in text and "各通道均值" in text and "标准差" in text
    assert "4 次试验，用时" in text and "最佳：" in text
    assert "worker 作业： 无（worker 是本会话的进程）" in text
    assert "本笔记本开始运行以来的计费：" in text and "（本会话）：CPU " in text, text
    assert f"{CHINESE} 的配额（计费账户 default）" in text  # shangzhuang.quota()'s report


def test_zh_04_publishes_lins_own_model_as_a_chinese_app(hub, chinese_student, trained_in_chinese):
    """lin's notebook 4 builds the app on the model her notebook 2 saved, and the viewer she
    shares it with opens it: its title and controls are in Chinese, no code is shown."""
    hub.new_user("wen")
    run = run_notebook(hub, CHINESE, chinese_student, "tutorials/04-share-a-voila-app.ipynb",
                       share_with=["wen"])  # fmt: skip
    text = run.text
    assert "ShapeNet(width=8)，来自 models/shapes.pt：500 张新图像中认对" in text, text
    # The model's verdict on each shape, which it names in Chinese.
    verdicts = re.findall(r"(\w+): 模型看到的是 (\S+)（\d+%，[对错]）", text)
    assert [shape for shape, _ in verdicts] == list(SHAPES_IN_CHINESE), text
    assert {name for _, name in verdicts} <= set(SHAPES_IN_CHINESE.values()), verdicts
    assert "已写出 shapes-app.ipynb，附带 shapes.py、shapes_app.py、models/shapes.pt" in text
    assert f"已发布 {CHINESE}/shapes（4 个文件）" in text and "谁可以打开： wen" in text, text
    wen = hub.login("wen", "correct-horse-9")
    r = open_app(wen, f"{hub.url}/services/apps/open/{CHINESE}/shapes")
    assert r.status_code == 200, (r.status_code, r.url, r.text[-500:])
    page = r.content.decode()  # Voila's text/html names no charset: requests would guess Latin-1
    # The title as nbconvert writes headings (HTML entities), the widget's repr as JSON.
    assert "这是什么形状？" in html.unescape(page) and "会告诉你它看到了什么" in page
    shape, circle = (words.encode("unicode_escape").decode() for words in ("形状", "圆形"))
    assert f"Dropdown(description=\\u0027{shape}\\u0027" in page and circle in page
    assert '"output_type": "error"' not in page and "load_model" not in page
