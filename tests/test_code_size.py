"""What a student reads stays small: the limits of CONTRIBUTING.md, measured by tools/code_size.py."""

from __future__ import annotations

import importlib.util
import textwrap

import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("code_size", ROOT / "tools" / "code_size.py")
code_size = importlib.util.module_from_spec(spec)
spec.loader.exec_module(code_size)


def test_the_reading_order_fits_its_limits():
    table, problems = code_size.report()
    assert not problems, "\n".join(problems) + "\n\n" + table


def test_the_reading_order_leaves_out_the_machinery():
    reading = {p.relative_to(code_size.ROOT).as_posix() for p in code_size.modules()
               if code_size.in_reading_order(p)}
    assert "conv.py" in reading and "distributed/schedule.py" in reading
    assert not any(name.startswith(("machinery/", "experiments/", "viz/")) for name in reading)


def test_body_lines_skip_the_docstring_and_count_nested_functions(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(41))
    source = textwrap.dedent('''
        def short():
            """A docstring
            over three
            lines."""
            return 1


        class A:
            def long(self):
        ''') + textwrap.indent(body, "    ") + "\n"
    path = tmp_path / "m.py"
    path.write_text(source)
    assert code_size.long_functions(path) == [("A.long", 41)]
    assert code_size.long_functions(path, limit=41) == []


@pytest.mark.parametrize("lines, over", [(300, False), (301, True)])
def test_a_module_over_the_limit_is_reported(tmp_path, lines, over):
    (tmp_path / "course_lib").mkdir()
    (tmp_path / "course_lib" / "big.py").write_text("x = 1\n" * lines)
    _, problems = code_size.report(tmp_path / "course_lib")
    assert any("big.py: 301 lines" in p for p in problems) == over, problems


def test_contributing_states_todays_counts():
    """CONTRIBUTING.md writes the reading order's size down; this keeps the figure true."""
    import re
    text = (ROOT / "CONTRIBUTING.md").read_text()
    stated = re.search(r"Today \(this commit\): ([\d,]+) lines in (\d+) modules", text)
    assert stated, "CONTRIBUTING.md should say 'Today (this commit): N lines in M modules'"
    reading = [p for p in code_size.modules() if code_size.in_reading_order(p)]
    measured = (sum(code_size.line_count(p) for p in reading), len(reading))
    written = (int(stated[1].replace(",", "")), int(stated[2]))
    assert written == measured, (f"CONTRIBUTING.md says {written[0]:,} lines in {written[1]} modules; "
                                 f"tools/code_size.py measures {measured[0]:,} in {measured[1]}: update the sentence")
