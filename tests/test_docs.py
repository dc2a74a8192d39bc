"""The README and the results document speak about the benchmark and its results, and what they cite exists."""

import functools
import json
import re

import pytest

from conftest import PROJECT_ROOT

DOCUMENTS = ["README.md", "results/README.md"]
RECORDS = PROJECT_ROOT / "results" / "records"
# How the project was built is no part of what it says: development sessions, machines that went away.
DEVELOPMENT_HISTORY = re.compile(r"session[s]? [0-9]+|lost with its machine", re.IGNORECASE)
# A records path as the documents cite it: results/records/<dataset>/<run>/frac<f>/draw<d>[/<file>], or a prefix.
RECORD_PATH = re.compile(r"results/records/[A-Za-z0-9_.\-/]*[A-Za-z0-9_]")
# A row of the README's summary table: `method` (or `co_training`, control), then Dice "mean ± std" per fraction.
TABLE_ROW = re.compile(r"^\| `(?P<method>[a-z_]+)`(?P<control>, control)?[^|]* \|(?P<cells>.*)$", re.MULTILINE)
MEAN_STD = re.compile(r"(\d\.\d{3}) ± (\d\.\d{3})")
TABLE_FRACTIONS = ["0.05", "0.1"]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_no_development_history(document):
    text = (PROJECT_ROOT / document).read_text()
    assert DEVELOPMENT_HISTORY.findall(text) == []


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_cited_record_exists(document):
    text = (PROJECT_ROOT / document).read_text()
    # Paths read from the history of the repository (`git show <commit>:results/records/...`) are not on disk.
    text = re.sub(r"git show [0-9a-f]+\^?:\S+", "", text)
    cited = RECORD_PATH.findall(text)
    assert cited or document != "README.md"
    missing = [p for p in cited if not (PROJECT_ROOT / p).exists()]
    assert missing == []


@functools.lru_cache(maxsize=None)
def _groups():
    """The report's groups of the records: a draw's replicates (seeds, hardware) averaged before the draws."""
    from ssl_bench.report import load_runs, summarize_groups
    return {(g.dataset, g.method, g.fraction): g for g in summarize_groups(load_runs(RECORDS / "no-run-folders", RECORDS))}


def _dice_over_draws(run: str, fraction: str):
    dice = _groups()["hippocampus", run, float(fraction)].dice
    return dice.mean, dice.std, dice.n


def _summary_tables():
    """The README's first-screen table and the full one of results/README.md's summary section."""
    readme = (PROJECT_ROOT / "README.md").read_text().split("## Quick start")[0]
    results = (PROJECT_ROOT / "results" / "README.md").read_text()
    section = results.split("## What the benchmark says")[1].split("\n## ")[0]
    return [readme, section]


@pytest.mark.parametrize("table", _summary_tables(), ids=["README", "results/README"])
def test_the_summary_tables_are_the_records(table):
    """Each Dice of the summary tables is the report's mean ± std over the draws recorded in results/records."""
    rows = list(TABLE_ROW.finditer(table))
    assert len(rows) >= 6
    for row in rows:
        run = row["method"] + ("-lambda_max0.0" if row["control"] else "")
        cells = MEAN_STD.findall(row["cells"])
        assert len(cells) == len(TABLE_FRACTIONS), row.group(0)
        for fraction, (mean, std) in zip(TABLE_FRACTIONS, cells):
            expected_mean, expected_std, draws = _dice_over_draws(run, fraction)
            assert draws >= 2, (run, fraction)
            assert (float(mean), float(std)) == (round(expected_mean, 3), round(expected_std, 3)), (run, fraction)


METHOD_REFERENCE = PROJECT_ROOT / "docs" / "methods.md"
# A citation of the method reference with its section: docs/methods.md ("ua_mt"), docs/methods.md, "The protocol".
SECTION_CITATION = re.compile(r'docs/methods\.md,?\s*\(?\s*"([^"]+)"')


def _reference_sections():
    return {line.lstrip("#").strip() for line in METHOD_REFERENCE.read_text().splitlines() if line.startswith("##")}


def test_every_registered_method_has_its_section_in_the_method_reference():
    from ssl_bench.registry import method_names
    sections = _reference_sections()
    missing = [name for name in method_names() if not any(name in s.split(" and ") for s in sections)]
    assert missing == []


def test_the_code_cites_the_method_reference_and_sections_it_has():
    sources = [p for folder in ("ssl_bench", "experiments", "tests") for p in (PROJECT_ROOT / folder).rglob("*")
               if p.suffix in (".py", ".yaml")]
    texts = {p: p.read_text() for p in sources}
    assert [p for p, text in texts.items() if "METHODS" + ".md" in text] == []
    cited = {(p.name, " ".join(section.split()))  # a section name may run over a line break
             for p, text in texts.items() for section in SECTION_CITATION.findall(text)}
    assert len(cited) > 10
    sections = _reference_sections()
    assert [c for c in cited if c[1] not in sections] == []


LA_RECORDS = RECORDS / "la_half-la_cpu"
# A row of the README's Left Atrium table: ours, a method and a draw, then Dice (%) at 4, 8 and 16 labeled and all.
LA_ROW = re.compile(r"^\| ours: `(?P<method>[a-z_]+)`, draw (?P<draw>\d) \|(?P<cells>[^|]*\|[^|]*\|[^|]*\|[^|]*)\|",
                    re.MULTILINE)
LA_COLUMNS = ["labeled4", "labeled8", "labeled16", "frac1.0"]


def _la_dice(method: str, column: str, draw: str):
    """Test Dice (%, last checkpoint) of a recorded la_cpu cell at the sweep's default training seed, or None."""
    metrics = LA_RECORDS / method / f"{column}-first_then_draw" / f"draw{draw}" / "metrics.json"
    return round(100 * json.loads(metrics.read_text())["primary"]["dice_mean"], 1) if metrics.exists() else None


def test_the_left_atrium_table_is_the_records():
    """Each of our Left Atrium rows gives every recorded cell of its method and draw, as recorded, and every recorded
    method and draw has its row: the table cannot fall behind the records."""
    section = (PROJECT_ROOT / "README.md").read_text().split("## Left Atrium as the papers use it")[1].split("\n## ")[0]
    rows = {(row["method"], row["draw"]): [cell.strip() for cell in row["cells"].split("|")]
            for row in LA_ROW.finditer(section)}
    recorded = {(path.parent.parent.parent.name, path.parent.name.removeprefix("draw"))
                for path in LA_RECORDS.glob("*/*-first_then_draw/draw*/metrics.json")
                if "-" not in path.parent.parent.parent.name}  # not a tagged variant (supervised-seed100)
    assert recorded and recorded <= set(rows)
    for (method, draw), cells in rows.items():
        for column, cell in zip(LA_COLUMNS, cells):
            expected = _la_dice(method, column, draw)
            shown = None if cell == "—" else float(cell.split()[0])
            assert shown == expected, (method, draw, column)
