"""Teacher pipelines against a real OpenAI-compatible HTTP server on 127.0.0.1 that returns canned replies:
render-and-repair, judges, code-grounded caption refinement, bad input, retries, cache and resumable builds."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image, ImageDraw

from codepercept_rl.errors import UserError
from data_tools.build import BuildSpec, build
from data_tools.captions import split_sentences, template_caption, verify_caption
from data_tools.store import Dataset
from data_tools.teacher.build import build_teacher, load_seed_images
from data_tools.teacher.client import ChatClient, TeacherError
from data_tools.teacher.pipelines import TeacherConfig, TeacherPipeline, parse_json_reply, seed_id
from tests.data_tools.conftest import judge_ok, message_images, message_text, run_data_cli

GOOD = (
    "import matplotlib.pyplot as plt\n"
    "fig, ax = plt.subplots(figsize=(3, 3))\n"
    "ax.add_patch(plt.Circle((0.5, 0.5), 0.3, color='red'))\n"
    "ax.set_title('Unit circle')\n"
    "ax.set_xlim(0, 1)\n"
    "ax.set_ylim(0, 1)\n"
)
BROKEN = GOOD.replace("plt.Circle", "plt.Circel")


def seed_png(colour: str = "red", shape: str = "ellipse") -> bytes:
    im = Image.new("RGB", (120, 120), "white")
    draw = ImageDraw.Draw(im)
    getattr(draw, shape)([30, 30, 90, 90], fill=colour)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def teacher(payload, *, code_reply=f"Here you go:\n```python\n{GOOD}```", refine=None, judge=judge_ok):
    """Canned teacher: caption, code (BROKEN first when asked to write from a caption), repairs, judges."""
    text = message_text(payload)
    verdict = judge(payload)
    if verdict is not None:
        return verdict
    if text.startswith("Describe this STEM figure"):
        return "A red circle in the middle of a square canvas, titled 'Unit circle'."
    if text.startswith("Here is a description"):
        return f"```python\n{BROKEN}```"
    if "failed with status" in text:
        return code_reply
    if text.startswith("State the principle"):
        return "Circles of different sizes illustrate radius."
    if text.startswith("Principle of a figure"):
        k = text.split("Write variant ")[1].split(" ")[0]
        return f"```python\n{GOOD.replace('0.3,', f'0.{k},')}```"
    if text.startswith("Draft caption"):
        return (
            refine
            or 'A red circle titled "Unit circle" is drawn. It draws 3 circles. A green square sits below.'
        )
    raise AssertionError(f"unexpected prompt: {text[:80]}")


def test_reproduce_repairs_judges_and_grounds_the_caption(chat_server, renderer, tmp_path):
    chat_server.responder = teacher
    png = seed_png()
    with ChatClient(chat_server.url, "teacher", cache_dir=tmp_path / "cache") as client:
        [outcome] = TeacherPipeline(client, renderer).reproduce(png, "seed.png")
    assert outcome.rejected is None and outcome.item is not None
    item = outcome.item
    assert item.id == f"reproduce-{seed_id(png)}-0" and item.code == GOOD and outcome.attempts == 2
    assert item.params["repairs"][0].startswith("exec_error") and "Circel" in item.params["repairs"][0]
    assert set(item.params["judges"]) == {"code_quality", "image_sanity", "consistency"}
    # the refined caption keeps the true sentence and loses the false count and the invented green square
    assert item.caption == 'A red circle titled "Unit circle" is drawn.'
    assert item.params["caption_sentences_dropped"] == 2
    assert verify_caption(item.caption, item.trace).dropped == []
    # the seed travelled as a data URL to the captioner
    assert message_images(chat_server.requests[0])[0].startswith("data:image/png;base64,")
    prompts = [message_text(p) for p in chat_server.requests]
    assert any("NameError" in p or "AttributeError" in p for p in prompts if "failed with status" in p)


def test_teacher_without_code_or_failing_judges_yields_no_item(chat_server, renderer):
    chat_server.responder = lambda p: teacher(p, code_reply="Sorry, I cannot write code for this.")
    with ChatClient(chat_server.url, "teacher") as client:
        [outcome] = TeacherPipeline(client, renderer).reproduce(seed_png(), "seed.png")
    assert outcome.item is None and outcome.rejected.startswith("no code")

    def mismatch(payload):
        if "Does the figure show what the code says" in message_text(payload):
            return '{"match": false, "reason": "the circle is blue in the code"}'
        return judge_ok(payload)

    chat_server.responder = lambda p: teacher(p, judge=mismatch)
    with ChatClient(chat_server.url, "teacher") as client:
        [outcome] = TeacherPipeline(client, renderer).reproduce(seed_png(), "seed.png")
    assert outcome.item is None and outcome.rejected.startswith("judges") and "blue" in outcome.rejected


def test_diversity_writes_k_variants(chat_server, renderer):
    chat_server.responder = teacher
    with ChatClient(chat_server.url, "teacher") as client:
        config = TeacherConfig(variants=3, refine_captions=False)
        outcomes = TeacherPipeline(client, renderer, config).diversity(seed_png(), "seed.png")
    assert [o.item.params["variant"] for o in outcomes] == [0, 1, 2]
    assert len({o.item.code for o in outcomes}) == 3 and len({o.png for o in outcomes}) == 3
    for o in outcomes:
        assert verify_caption(o.item.caption, o.item.trace).dropped == []


def test_client_retries_transient_errors_and_caches(chat_server, tmp_path):
    calls = []

    def flaky(payload):
        calls.append(1)
        return (503, "overloaded") if len(calls) < 3 else "fine"

    chat_server.responder = flaky
    with ChatClient(chat_server.url, "m", backoff_s=0.01, cache_dir=tmp_path) as client:
        assert client.chat([{"role": "user", "content": "hi"}]) == ["fine"]
        assert len(calls) == 3
        assert client.chat([{"role": "user", "content": "hi"}]) == ["fine"]  # from the disk cache
        assert len(calls) == 3 and client.cache_hits == 1
    chat_server.responder = lambda p: (400, "bad model name")
    with (
        ChatClient(chat_server.url, "m", backoff_s=0.01) as client,
        pytest.raises(TeacherError, match="HTTP 400: bad model name"),
    ):
        client.chat([{"role": "user", "content": "x"}])
    with (
        ChatClient("http://127.0.0.1:9/v1", "m", max_retries=1, backoff_s=0.01) as client,
        pytest.raises(TeacherError, match="gave up after 2 attempts"),
    ):
        client.chat([{"role": "user", "content": "x"}])


def test_parse_json_reply():
    assert parse_json_reply('Sure! {"pass": true, "score": 4} done') == {"pass": True, "score": 4}
    with pytest.raises(ValueError, match="no JSON object"):
        parse_json_reply("looks fine to me")


def test_bad_seed_image_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image")
    with pytest.raises(UserError, match="notes.png: not a readable image"):
        load_seed_images([bad])
    proc = run_data_cli(
        "teacher", "reproduce", "--seeds", str(bad), "--out", str(tmp_path / "o"),
        "--endpoint", "http://127.0.0.1:9/v1", "--model", "m",
    )  # fmt: skip
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "not a readable image" in proc.stderr


def test_interrupted_teacher_build_resumes_without_duplicates(chat_server, tmp_path):
    seeds = [
        (f"s{i}.png", seed_png(c, s))
        for i, (c, s) in enumerate([("red", "ellipse"), ("blue", "rectangle"), ("green", "ellipse")])
    ]
    third = seeds[2][1]

    def down_on_third(payload):
        images = message_images(payload)
        if images and images[0] == "data:image/png;base64," + base64.b64encode(third).decode():
            return (400, "model crashed on this input")
        return teacher(payload)

    out = tmp_path / "ds"
    chat_server.responder = down_on_third
    config = TeacherConfig(refine_captions=False)
    with (
        ChatClient(chat_server.url, "teacher", cache_dir=tmp_path / "cache") as client,
        pytest.raises(UserError, match="teacher endpoint failed in shard 2.*rerun the same command"),
    ):
        build_teacher(
            "reproduce", seeds, out, client, config=config, shard_size=1, concurrency=2, progress=False
        )
    assert Dataset(out).shard_indices() == [0, 1]
    sent_before = len(chat_server.requests)

    chat_server.responder = teacher
    with ChatClient(chat_server.url, "teacher", cache_dir=tmp_path / "cache") as client:
        summary = build_teacher("reproduce", seeds, out, client, config=config, shard_size=1, progress=False)
    assert summary.shards_skipped == 2 and summary.rendered == 3
    # the canned teacher wrote the same program for every seed: dedup keeps one
    assert summary.per_family == {"reproduce": 1} and summary.dedup_removed == 2
    ids = [it.id for it in Dataset(out).load_items(dedup=False)]
    assert sorted(ids) == sorted(f"reproduce-{seed_id(p)}-0" for _, p in seeds)
    # the rerun asked only about the third seed: its caption and code requests (they carry its image); its
    # repair and judge requests equal earlier seeds' ones (same program, same render) and came from the cache
    rerun = chat_server.requests[sent_before:]
    assert len(rerun) == 2
    done_urls = {"data:image/png;base64," + base64.b64encode(p).decode() for _, p in seeds[:2]}
    assert not any(set(message_images(r)) & done_urls for r in rerun)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "teacher" and manifest["summary"]["rendered"] == 3


def test_teacher_cli_diversity_end_to_end(chat_server, tmp_path):
    chat_server.responder = teacher
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    (seeds / "a.png").write_bytes(seed_png())
    out = tmp_path / "ds"
    args = [
        "teacher", "diversity", "--seeds", str(seeds), "--out", str(out), "--endpoint", chat_server.url,
        "--model", "teacher", "--variants", "2", "--no-progress",
    ]  # fmt: skip
    proc = run_data_cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 kept of 2 planned" in proc.stdout
    items = Dataset(out).load_items()
    assert [it.params["variant"] for it in items] == [0, 1] and all(it.source == "diversity" for it in items)
    assert any((out / "teacher_cache").rglob("*.json"))
    n_requests = len(chat_server.requests)
    rerun = run_data_cli(*args)
    assert rerun.returncode == 0 and "(1 finished shards skipped)" in rerun.stdout
    assert len(chat_server.requests) == n_requests  # nothing asked twice


def test_build_with_llm_refined_captions_keeps_only_verified_sentences(chat_server, renderer, tmp_path):
    def refine(payload):  # keeps the draft's first two sentences, adds a count the trace contradicts
        text = message_text(payload)
        assert text.startswith("Draft caption") and '"counts"' in text  # the trace travels with the draft
        draft = text.split("\n\n")[1]
        return " ".join(split_sentences(draft)[:2]) + " It draws 99 circles."

    chat_server.responder = refine
    spec = BuildSpec(["bars"], 3, seed=2, shard_size=3, refine_model="captioner")
    with ChatClient(chat_server.url, "captioner", cache_dir=tmp_path / "cache") as client:
        build(spec, tmp_path / "ds", progress=False, renderer=renderer, refine_client=client)
    ds = Dataset(tmp_path / "ds")
    for item in ds.load_items():
        template = template_caption(item.trace, item.subject)
        assert item.caption == " ".join(split_sentences(template)[:2])
    assert ds.shard_stats(0)["refine_sentences_dropped"] == 3
    with pytest.raises(UserError, match="needs both a model name and an endpoint"):
        build(spec, tmp_path / "other", progress=False, renderer=renderer)


def test_teacher_that_never_writes_code_stops_the_cli(chat_server, tmp_path):
    chat_server.responder = lambda payload: "I am a helpful assistant and I like figures."
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    (seeds / "a.png").write_bytes(seed_png())
    proc = run_data_cli(
        "teacher", "reproduce", "--seeds", str(seeds), "--out", str(tmp_path / "ds"),
        "--endpoint", chat_server.url, "--model", "chatty", "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert "returned no code for any of the 1 programs of shard 0" in line and "check --endpoint" in line
    assert not (tmp_path / "ds" / "items").exists() or not list((tmp_path / "ds" / "items").glob("*.jsonl"))
