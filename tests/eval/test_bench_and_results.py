"""Bench layouts (native, item folders, released STEM2Code-Eval JSONL, data_tools S1) and the results file."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from codepercept_rl.errors import UserError
from codepercept_rl.eval.bench import load_bench
from codepercept_rl.eval.results import ResultsFile, read_results
from codepercept_rl.eval.scoring import answer_code

CODE = "import matplotlib.pyplot as plt\nplt.plot([0, 1], [0, 1])\n"


def png(color: str = "red", size: tuple[int, int] = (40, 30), fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_released_stem2code_layout(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "MathVision_images_1007_v5.png").write_bytes(png())
    (tmp_path / "imgs" / "WeMath_12.jpg").write_bytes(png("blue", fmt="JPEG"))
    released = {  # the positions evaluation.py reads: messages[1].content[0].image, messages[3].content[0].text
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "sys"}]},
            {"role": "user", "content": [{"type": "image", "image": "imgs/MathVision_images_1007_v5.png"},
                                         {"type": "text", "text": "Describe."}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A caption."}]},
            {"role": "assistant", "content": [{"type": "text", "text": CODE}]},
        ]
    }  # fmt: skip
    other = {  # no fixed positions: first user image, last assistant turn with a fenced block
        "category": "math",
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "imgs/WeMath_12.jpg"}}]},
            {"role": "assistant", "content": f"```python\n{CODE}```"},
        ],
    }
    broken = {"messages": [{"role": "user", "content": "no image"}]}
    items = load_bench(write_jsonl(tmp_path / "STEM2Code.jsonl", [released, other, broken]))
    assert [it.id for it in items] == ["0", "1", "2"]
    assert items[0].reference_code == CODE and items[0].category == "MathVision" and not items[0].problems
    assert items[0].read_image().startswith(b"\x89PNG")
    assert items[1].reference_code == CODE and items[1].category == "math"
    assert items[1].read_image().startswith(b"\x89PNG")  # JPEG bench images are re-encoded as PNG
    assert items[2].problems == ["no image path in the bench row", "no reference code"]


def test_data_tools_s1_test_split(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "cube_net-0123456789ab.png").write_bytes(png())
    rows = [
        {"id": "cube_net-0123456789ab-caption", "task": "caption", "images": ["../../images/cube_net-0123456789ab.png"],
         "messages": [{"role": "user", "content": "<image>\nDescribe"}, {"role": "assistant", "content": "x"}]},
        {"id": "cube_net-0123456789ab-code", "task": "code", "images": ["../../images/cube_net-0123456789ab.png"],
         "messages": [{"role": "user", "content": "<image>\nCode"},
                      {"role": "assistant", "content": f"```python\n{CODE}```"}]},
    ]  # fmt: skip
    write_jsonl(tmp_path / "exports" / "s1" / "test.jsonl", rows)
    (item,) = load_bench(tmp_path)
    assert (item.id, item.category, item.reference_code, item.problems) == (
        "cube_net-0123456789ab", "cube_net", CODE, []
    )  # fmt: skip


def test_data_tools_r1_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"data_source": "codepercept/polyhedra", "prompt": [{"role": "user", "content": "<image>\nCode"}],
         "images": [{"bytes": png()}], "reward_model": {"style": "rule", "ground_truth": CODE},
         "extra_info": {"item_id": "polyhedra-00aa", "family": "polyhedra"}},
        {"data_source": "codepercept/polyhedra", "prompt": [{"role": "user", "content": "<image>\nCode"}],
         "images": [{"bytes": b"not an image"}], "reward_model": {"style": "rule", "ground_truth": CODE},
         "extra_info": {"item_id": "polyhedra-00bb", "family": "polyhedra"}},
    ]  # fmt: skip
    path = tmp_path / "exports" / "r1" / "test.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    good, bad = load_bench(tmp_path)
    assert (good.id, good.category, good.reference_code, good.problems) == (
        "polyhedra-00aa",
        "polyhedra",
        CODE,
        [],
    )
    assert good.read_image() == rows[0]["images"][0]["bytes"]
    with pytest.raises(ValueError, match="polyhedra-00bb: not a decodable image"):
        bad.read_image()


def test_native_manifest_and_item_folders(tmp_path: Path) -> None:
    native = tmp_path / "native"
    (native / "images").mkdir(parents=True)
    (native / "images" / "a.png").write_bytes(png())
    write_jsonl(native / "bench.jsonl", [
        {"id": "a", "image": "images/a.png", "reference_code": CODE, "category": "c", "question": "q?",
         "answer": "B", "choices": ["x", "y"]},
        {"id": "b", "image": "images/b.png", "reference_code": CODE},
    ])  # fmt: skip
    a, b = load_bench(native)
    assert (a.question, a.answer, a.choices, a.problems) == ("q?", "B", ["x", "y"], [])
    assert b.problems and "image file not found" in b.problems[0]
    folders = tmp_path / "folders"
    (folders / "f1").mkdir(parents=True)
    (folders / "f1" / "image.png").write_bytes(png())
    (folders / "f1" / "reference.py").write_text(CODE)
    (folders / "f1" / "meta.json").write_text(json.dumps({"category": "geo"}))
    (f1,) = load_bench(folders)
    assert (f1.id, f1.category, f1.reference_code) == ("f1", "geo", CODE)


def test_unreadable_benches_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_bench(tmp_path / "nope")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "image": "x.png"}\n[1, 2]\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: expected a JSON object"):
        load_bench(bad)
    dup = write_jsonl(tmp_path / "dup.jsonl", [{"id": "a", "image": "x"}, {"id": "a", "image": "y"}])
    with pytest.raises(UserError, match="duplicate item id 'a'"):
        load_bench(dup)
    with pytest.raises(UserError, match="no bench.jsonl"):
        load_bench(tmp_path)


def test_answer_code_rules() -> None:
    assert answer_code("<think>```python\nwrong()\n```</think>Final:\n```python\nright()\n```") == "right()\n"
    assert answer_code("import matplotlib\nplt.plot()") is None  # no fence: no code (the benchmark's rule)
    assert (
        answer_code("import matplotlib\nplt.plot()", require_fence=False) == "import matplotlib\nplt.plot()"
    )
    assert answer_code("```python\n   \n```") is None
    assert answer_code(None) is None


def test_results_file_drops_a_torn_tail_and_never_scores_twice(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    with ResultsFile(path) as rf:
        rf.append({"id": "a", "v": 1})
        rf.append({"id": "b", "v": 2})
        with pytest.raises(ValueError, match="already has a result"):
            rf.append({"id": "a", "v": 3})
    with open(path, "ab") as f:
        f.write(b'{"id": "c", "v"')  # a write cut short by a kill
    assert set(read_results(path)) == {"a", "b"}  # readers ignore the torn line
    with ResultsFile(path) as rf:
        assert rf.dropped_tail_bytes == len(b'{"id": "c", "v"') and set(rf.records) == {"a", "b"}
        rf.append({"id": "c", "v": 4})
    lines = path.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["a", "b", "c"]


def test_corrupt_line_in_the_middle_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(UserError, match="not valid JSON and is not the last line"):
        read_results(path)
