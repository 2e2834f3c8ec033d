"""The spawn form: one radio per profile, the unavailable ones disabled and saying why."""

from __future__ import annotations

import asyncio
import tomllib
from html.parser import HTMLParser

import pytest
from jupyterhub.spawner import SpawnException

from shangzhuang.hub import form
from shangzhuang.hub.gpus import GpuPool
from shangzhuang.settings import DEFAULT_CONFIG, Profile, parse_settings
from tests.unit.spawner_kit import gpus, make_spawner, profile


def shipped_profiles() -> list[Profile]:
    """The shipped config's profiles: cpu (no GPU), gpu-1, gpu-2."""
    doc = tomllib.loads(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    doc["backend"]["local"]["gpus"] = [{"index": 0}, {"index": 1}]  # not this node's NVML
    return parse_settings(doc).profiles


PROFILES = shipped_profiles()


class Parsed(HTMLParser):
    """What a browser makes of the form: its tags, radios, labels and visible text."""

    def __init__(self, html: str):
        super().__init__()
        self.tags: list[str] = []
        self.radios: list[dict] = []
        self.labels: list[dict] = []
        self.text: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "input":
            self.radios.append(dict(attrs))
        elif tag == "label":
            self.labels.append(dict(attrs))

    def handle_data(self, data):
        if data.strip():
            self.text.append(data.strip())

    def checked(self) -> list[str]:
        return [r["value"] for r in self.radios if "checked" in r]

    def disabled(self) -> list[str]:
        return [r["value"] for r in self.radios if "disabled" in r]


def availability(choices: list[form.Choice]) -> list[tuple[str, bool, str]]:
    return [(c.profile.name, c.available, c.why_not) for c in choices]


def pool_with(total: int, used: int) -> GpuPool:
    pool = GpuPool(gpus(total))
    if used:
        pool.allocate("someone/", used)
    return pool


# --- choices: what the node can start now ----------------------------------------------


def test_all_free():
    assert availability(form.choices(PROFILES, pool_with(2, 0))) == [
        ("cpu", True, ""),
        ("gpu-1", True, ""),
        ("gpu-2", True, ""),
    ]


def test_partly_used():
    assert availability(form.choices(PROFILES, pool_with(2, 1))) == [
        ("cpu", True, ""),
        ("gpu-1", True, ""),
        ("gpu-2", False, "1 of 2 GPUs free"),
    ]


def test_every_gpu_in_use():
    assert availability(form.choices(PROFILES, pool_with(2, 2))) == [
        ("cpu", True, ""),
        ("gpu-1", False, "0 of 2 GPUs free"),
        ("gpu-2", False, "0 of 2 GPUs free"),
    ]


def test_node_without_gpu():
    assert availability(form.choices(PROFILES, GpuPool([]))) == [
        ("cpu", True, ""),
        ("gpu-1", False, "this node has no GPU"),
        ("gpu-2", False, "this node has no GPU"),
    ]


def test_choices_follow_the_pool_as_gpus_are_released():
    pool = pool_with(2, 2)
    assert [c.available for c in form.choices(PROFILES, pool)] == [True, False, False]
    pool.release("someone/")
    assert [c.available for c in form.choices(PROFILES, pool)] == [True, True, True]


# --- render: the HTML ---------------------------------------------------------------------


def test_one_radio_per_profile_in_order():
    page = Parsed(form.render(form.choices(PROFILES, pool_with(2, 0))))
    assert [(r["type"], r["name"], r["value"]) for r in page.radios] == [
        ("radio", "profile", "cpu"),
        ("radio", "profile", "gpu-1"),
        ("radio", "profile", "gpu-2"),
    ]
    assert [lab["data-profile"] for lab in page.labels] == ["cpu", "gpu-1", "gpu-2"]
    assert page.disabled() == []
    assert page.checked() == ["cpu"]


def test_unavailable_profiles_are_disabled_and_say_why():
    page = Parsed(form.render(form.choices(PROFILES, pool_with(2, 1))))
    assert page.disabled() == ["gpu-2"]
    assert [lab["data-available"] for lab in page.labels] == ["true", "true", "false"]
    assert "disabled" in page.labels[2]["class"].split()
    assert "disabled" not in page.labels[0]["class"].split()
    assert page.text.count("available") == 2
    assert "1 of 2 GPUs free" in page.text


def test_the_first_available_profile_is_checked():
    gpu_first = [PROFILES[2], PROFILES[1], PROFILES[0]]  # gpu-2, gpu-1, cpu
    page = Parsed(form.render(form.choices(gpu_first, pool_with(2, 1))))
    assert page.disabled() == ["gpu-2"]
    assert page.checked() == ["gpu-1"]


def test_nothing_checked_when_nothing_is_available():
    page = Parsed(form.render(form.choices(PROFILES[1:], GpuPool([]))))
    assert page.disabled() == ["gpu-1", "gpu-2"]
    assert page.checked() == []


def test_text_from_the_config_is_escaped():
    evil = profile(
        "evil",
        display_name='Big <b>"GPU"</b> & co',
        description="<script>alert('owned')</script> & <img src=x onerror=alert(1)>",
    )
    html = form.render(form.choices([evil], pool_with(2, 0)))
    page = Parsed(html)
    assert "script" not in page.tags and "img" not in page.tags and "b" not in page.tags
    assert "<script>alert('owned')</script> & <img src=x onerror=alert(1)>" in page.text
    assert 'Big <b>"GPU"</b> & co' in page.text
    assert "&lt;script&gt;" in html


def test_resources_shown_beside_each_profile():
    assert [form.resources(p) for p in PROFILES] == [
        "2 cores · 4 GB · no GPU",
        "8 cores · 64 GB · 1 GPU",
        "16 cores · 128 GB · 2 GPUs",
    ]
    assert form.resources(profile("small", cores=0.5, memory="512M")) == (
        "0.5 cores · 512 MB · no GPU"
    )
    assert form.resources(profile("odd", 3, cores=4, memory="1.5G")) == "4 cores · 1.5 GB · 3 GPUs"
    page = Parsed(form.render(form.choices(PROFILES, pool_with(2, 0))))
    assert "16 cores · 128 GB · 2 GPUs" in page.text


# --- the spawner's form -------------------------------------------------------------------


def test_the_spawners_form_shows_its_pool():
    pool = pool_with(2, 1)
    spawner = make_spawner(pool, profiles=PROFILES)
    page = Parsed(asyncio.run(spawner.options_form(spawner)))
    assert page.disabled() == ["gpu-2"]
    pool.release("someone/")
    assert Parsed(asyncio.run(spawner.options_form(spawner))).disabled() == []


def test_the_form_answer_names_a_profile():
    spawner = make_spawner(GpuPool([]), profiles=PROFILES)
    assert spawner.options_from_form({"profile": ["gpu-1"]}) == {"profile": "gpu-1"}
    spawner.user_options = spawner.options_from_form({"profile": ["gpu-1"]})
    assert spawner.profile.name == "gpu-1"
    spawner.user_options = spawner.options_from_form({})
    assert spawner.profile.name == "cpu"  # none chosen: the first profile


def test_an_unknown_profile_is_a_400_naming_the_choices():
    spawner = make_spawner(GpuPool([]), profiles=PROFILES)
    spawner.user_options = {"profile": "gpu-8"}
    with pytest.raises(SpawnException) as refused:
        spawner.profile  # noqa: B018
    assert refused.value.status_code == 400
    assert refused.value.reason == "bad-profile"
    assert refused.value.message == "Unknown profile 'gpu-8'; this site offers: cpu, gpu-1, gpu-2."
