"""Every lesson is framed for a student (CONTRIBUTING.md, "Notebooks").

It opens, right after its title cell, with "## Before you start": 3 to 5 objectives, the lessons and math needed
first, the lecture slides it covers by their exact titles, and its student time, which the README's lessons table
repeats. It ends with "Check yourself" (answers in `<details>`) and then one "## Further reading" cell.
"""
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

# Lecture 5's slide titles, verbatim: its "# " headings, and the "## " headings that title a slide of their own.
SLIDE_TITLES = {
    "Downpour SGD", "Downpour SGD: Sources of Stochasticity", "Scaling with Model Parallelism",
    "Scaling with Downpour SGD", "Runtime-Resource Tradeoff in Downpour SGD", "Reduction over Gradients",
    "Reduction Topologies", "Ring All-Reduce", "Ring All-Reduce: Scatter-Reduce Step",
    "Ring All-Reduce: End of Scatter-Reduce Step", "Ring All-Reduce: AllGather Step",
    "Ring All-Reduce: End of AllGather Step", "Parameter Server (PS) vs Ring All-Reduce: Communication Cost",
    "Distributed Scaling Speed up -- Facebook", "Imagenet Distributed Training",
    "Training Error Vs Batch Size: Distributed Training", "Runtime Scaling", "PowerAI DDL --IBM",
    "Imagenet1K/ResNet50 Training at Scale", "Horovod – L LF AI", "Distributed Tensorflow Benchmarking -- Uber",
    "Horovod Benchmarking – Uber", "Key Factors in Scalable DL Training", "Parameter and Gradient Compression",
    "Tensorflow", "Tensor Processing Units", "TPUs vs GPUs Performance", "Convolutional Neural Networks (CNNs)",
    "Convolution Layer", "Example of Convolution", "Convolution Layer: Size of output",
    "Convolution Neural Networks Properties", "Padding", "Padding example", "Max Pooling",
    "Convolution as a Matrix Operation", "Convolution Summary", "Creating Convolutional Neural Networks",
    "Recall from last lecture",
}


def _opening(nb) -> str:
    cell = nb.cells[1]
    assert cell.cell_type == "markdown" and cell.source.startswith("## Before you start"), (
        "the cell after the title must be the '## Before you start' markdown cell, got: " + cell.source[:80])
    return cell.source


def _minutes(text: str) -> int:
    m = re.search(r"\*\*Student time:\*\* about (\d+) min", text)
    assert m, "no '**Student time:** about N min' line"
    return int(m.group(1))


def test_there_are_thirteen_lessons():
    assert len(LESSONS) == 13, [p.name for p in LESSONS]


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_lesson_opens_with_objectives_prerequisites_slides_and_time(path):
    text = _opening(nbformat.read(path, as_version=4))
    objectives = text.split("**What you will be able to do**")[1].split("**What you need first**")[0]
    bullets = [line for line in objectives.splitlines() if line.startswith("- ")]
    assert 3 <= len(bullets) <= 5, f"{path.name}: {len(bullets)} objectives, expected 3 to 5"
    assert all(re.match(r"- \*\*[a-z]+\*\* ", b) for b in bullets), f"{path.name}: each objective starts with a verb"
    assert "*Lessons:*" in text and "*Math:*" in text, f"{path.name}: prerequisites (lessons and math) missing"
    slides_line = next(line for line in text.splitlines() if line.startswith("**Lecture slides covered**"))
    slides = re.findall(r'"([^"]+)"', slides_line)
    assert slides, f"{path.name}: no slide titles"
    unknown = sorted(set(slides) - SLIDE_TITLES)
    assert not unknown, f"{path.name}: not a slide title of the lecture: {unknown}"
    assert 30 <= _minutes(text) <= 90, f"{path.name}: student time {_minutes(text)} min, expected 30 to 90"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_lesson_ends_with_check_yourself_then_further_reading(path):
    nb = nbformat.read(path, as_version=4)
    check, reading = nb.cells[-2], nb.cells[-1]
    assert check.cell_type == "markdown" and re.search(r"^## Check yourself$", check.source, flags=re.M), (
        f"{path.name}: the last-but-one cell must hold '## Check yourself'")
    assert "<details>" in check.source and "</details>" in check.source, f"{path.name}: answers not collapsed"
    assert reading.cell_type == "markdown" and reading.source.startswith("## Further reading"), (
        f"{path.name}: the last cell must be '## Further reading'")
    entries = [line for line in reading.source.splitlines() if line.startswith("- ")]
    assert entries, f"{path.name}: 'Further reading' lists nothing"
    extra = reading.source.split("*Not from the lecture*")
    assert len(extra) <= 2 and (len(extra) == 1 or extra[1].count("\n- ") <= 1), (
        f"{path.name}: at most one reference not from the lecture, under one '*Not from the lecture*' mark")


def test_readme_student_time_matches_each_lesson():
    readme = (ROOT / "README.md").read_text()
    assert "| student time |" in readme
    rows = dict(re.findall(r"^\| \d+ \| \[(\d\d_\w+)\].*\| (\d+) min \|$", readme, flags=re.M))
    assert sorted(rows) == [p.stem for p in LESSONS], sorted(rows)
    for path in LESSONS:
        minutes = _minutes(_opening(nbformat.read(path, as_version=4)))
        assert int(rows[path.stem]) == minutes, f"{path.stem}: README says {rows[path.stem]} min, lesson {minutes}"
