"""The Spark example of docs/large_datasets.md on a local Spark (2 cores): the values, base values and
summary equal the in-process ones, and every row keeps its id.

The example is fenced ```python spark, so that tests/test_docs.py (which runs the ```python blocks)
leaves it to this module, which skips where pyspark or a Java runtime is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch

pyspark = pytest.importorskip("pyspark")
pytest.importorskip("pyarrow")  # mapInPandas moves the rows as Arrow batches
pytest.importorskip("pandas")

import rnnshap  # noqa: E402

from .conftest import assert_rounding_close  # noqa: E402

pytestmark = pytest.mark.cluster  # a step of its own in CI: python -m pytest -q -m cluster

PAGE = Path(__file__).resolve().parents[1] / "docs" / "large_datasets.md"


def _java_version() -> int | None:
    """The major version of the Java runtime Spark would start (JAVA_HOME first, then PATH), or None."""
    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home else shutil.which("java")
    if not java or not os.access(java, os.X_OK):
        return None
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major  # "1.8.0_392" is Java 8


_JAVA = _java_version()
_NEEDED = 17 if int(pyspark.__version__.split(".")[0]) >= 4 else 8
if _JAVA is None:
    pytest.skip("no Java runtime (java on PATH or JAVA_HOME): Spark needs one", allow_module_level=True)
if _JAVA < _NEEDED:
    pytest.skip(f"pyspark {pyspark.__version__} needs Java {_NEEDED}+, found Java {_JAVA}", allow_module_level=True)


def spark_blocks() -> list[str]:
    return re.findall(r"```python spark\n(.*?)```", PAGE.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    from pyspark.sql import SparkSession

    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYSPARK_PYTHON", sys.executable)  # the workers need this environment's torch and rnnshap
        env.setenv("SPARK_LOCAL_IP", "127.0.0.1")
        session = (
            SparkSession.builder.master("local[2]")
            .appName("rnnshap-tests")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.shuffle.partitions", "2")
            .getOrCreate()
        )
        session.sparkContext.setLogLevel("ERROR")
        try:
            yield session
        finally:
            session.stop()


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Torch on one thread here too, as Spark's workers run it: the JVM and the workers share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def example(spark: Any, one_thread: None) -> dict[str, Any]:
    """The namespace after the page's first example (the model, the background) and its Spark example."""
    setup = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)[0]
    blocks = spark_blocks()
    assert len(blocks) == 1, "docs/large_datasets.md should have one ```python spark example"
    namespace: dict[str, Any] = {"__name__": "docs_large_datasets_spark"}  # not importable: pickled by value
    for name, block in [("example 1", setup), ("the Spark example", blocks[0])]:
        try:
            exec(compile(block, f"large_datasets.md, {name}", "exec"), namespace)
        except Exception as error:  # pragma: no cover - the message is the point
            raise AssertionError(f"{name} of docs/large_datasets.md fails: {error!r}\n{block}") from error
    return namespace


def _in_process(example: dict[str, Any]) -> tuple[Any, np.ndarray]:
    explainer = rnnshap.DeepExplainer(example["make_model"](), example["background"])
    return explainer, explainer.shap_values(example["x"])


def test_explained_rows_hold_the_in_process_values_of_their_id(example: dict[str, Any]) -> None:
    assert example["sequences"].rdd.getNumPartitions() >= 2  # several tasks, each building its explainer
    x, shape = example["x"], example["shape"]
    rows = sorted(example["explained"].collect(), key=lambda row: row.id)
    assert [row.id for row in rows] == list(range(len(x)))
    explainer, expected = _in_process(example)
    values = np.stack([np.reshape(row.shap_values, shape) for row in rows])
    assert_rounding_close(values, expected, np.float32, what="φ")
    np.testing.assert_array_equal([row.base_values for row in rows], np.full(len(x), explainer.expected_value))
    assert_rounding_close(example["phi"], expected[0], np.float32, what="φ of row 0")


def test_merged_summary_equals_the_in_process_summary(example: dict[str, Any]) -> None:
    x, summary = example["x"], example["summary"]
    assert len(example["parts"]) >= 4  # one per batch of 16 rows: the merge is exercised
    explainer, expected = _in_process(example)
    local = explainer.summarize(x)
    assert summary.count == len(x)
    assert_rounding_close(summary.mean, local.mean, np.float32, what="mean φ")
    assert_rounding_close(example["importance"], local.mean_abs, np.float32, what="mean |φ|")
    np.testing.assert_allclose(summary.base_value, local.base_value, rtol=1e-12)
    assert sorted(summary.sample_rows) == list(range(len(x)))  # sample_size 100 keeps all 64, named by id
    assert_rounding_close(summary.sample, expected[summary.sample_rows], np.float32, what="sampled φ")
    np.testing.assert_array_equal(summary.sample_data[0], x[summary.sample_rows])
