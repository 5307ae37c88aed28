"""Tests of swarm.daemon.resources: cgroup-aware probes on fake /proc and /sys trees, and user input."""

from __future__ import annotations

import math
import os
import platform
import socket
from pathlib import Path

import pytest

from swarm.core.labels import BUILTIN_LABELS
from swarm.core.spec import Resources
from swarm.core.units import parse_size
from swarm.daemon import resources
from swarm.daemon.config import parse_label
from swarm.daemon.resources import (
    available_memory_bytes,
    builtin_labels,
    probe,
    probe_cpus,
    probe_gpus,
    probe_memory_bytes,
)
from swarm.errors import ConfigError, SizeError, UserInputError

KIB = 1024
MIB = 1024**2
GIB = 1024**3
TIB = 1024**4
V1_UNLIMITED = "9223372036854771712"


# --- fake trees ----------------------------------------------------------------------------------


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n", encoding="ascii")


def meminfo(root: Path, total_kib: int, available_kib: int | None = None) -> None:
    lines = [f"MemTotal:       {total_kib} kB", "MemFree:         1000 kB"]
    if available_kib is not None:
        lines.append(f"MemAvailable:   {available_kib} kB")
    lines.append("HugePages_Total:       0")
    write(root, "proc/meminfo", "\n".join(lines))


def cgroup_v1(
    root: Path,
    *,
    quota: int = -1,
    period: int = 100_000,
    limit: str = V1_UNLIMITED,
    usage: int = 0,
    inactive_file: int | None = None,
) -> None:
    write(root, "sys/fs/cgroup/cpu/cpu.cfs_quota_us", str(quota))
    write(root, "sys/fs/cgroup/cpu/cpu.cfs_period_us", str(period))
    write(root, "sys/fs/cgroup/memory/memory.limit_in_bytes", limit)
    write(root, "sys/fs/cgroup/memory/memory.usage_in_bytes", str(usage))
    if inactive_file is not None:
        stat = f"cache 5\ntotal_inactive_file {inactive_file}\ntotal_rss 7"
        write(root, "sys/fs/cgroup/memory/memory.stat", stat)


def cgroup_v2(
    root: Path,
    *,
    cpu_max: str = "max 100000",
    memory_max: str = "max",
    current: int = 0,
    inactive_file: int | None = None,
) -> None:
    write(root, "sys/fs/cgroup/cpu.max", cpu_max)
    write(root, "sys/fs/cgroup/memory.max", memory_max)
    write(root, "sys/fs/cgroup/memory.current", str(current))
    if inactive_file is not None:
        write(root, "sys/fs/cgroup/memory.stat", f"anon 3\ninactive_file {inactive_file}\nfile 9")


@pytest.fixture
def eight_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake root is not this process, so probe_cpus counts os.cpu_count(); pin it."""
    monkeypatch.setattr(os, "cpu_count", lambda: 8)


# --- CPUs ----------------------------------------------------------------------------------------


@pytest.mark.usefixtures("eight_cpus")
class TestProbeCpus:
    def test_no_cgroup(self, tmp_path: Path) -> None:
        assert probe_cpus(tmp_path) == 8.0

    @pytest.mark.parametrize(
        ("quota", "period", "expected"),
        [
            (-1, 100_000, 8.0),
            (200_000, 100_000, 2.0),
            (50_000, 100_000, 0.5),
            (150_000, 100_000, 1.5),
            (1_600_000, 100_000, 8.0),  # a quota above the CPU count does not add CPUs
            (0, 100_000, 8.0),  # nonsense quota: ignored
            (200_000, 0, 8.0),  # nonsense period: ignored
        ],
    )
    def test_cgroup_v1(self, tmp_path: Path, quota: int, period: int, expected: float) -> None:
        cgroup_v1(tmp_path, quota=quota, period=period)
        assert probe_cpus(tmp_path) == expected

    @pytest.mark.parametrize(
        ("cpu_max", "expected"),
        [
            ("max 100000", 8.0),
            ("max", 8.0),
            ("200000 100000", 2.0),
            ("50000 100000", 0.5),
            ("300000 200000", 1.5),
            ("garbage", 8.0),
            ("", 8.0),
        ],
    )
    def test_cgroup_v2(self, tmp_path: Path, cpu_max: str, expected: float) -> None:
        cgroup_v2(tmp_path, cpu_max=cpu_max)
        assert probe_cpus(tmp_path) == expected

    def test_returns_float(self, tmp_path: Path) -> None:
        assert isinstance(probe_cpus(tmp_path), float)

    def test_unknown_cpu_count_is_one(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(os, "cpu_count", lambda: None)
        assert probe_cpus(tmp_path) == 1.0


# --- memory --------------------------------------------------------------------------------------


class TestProbeMemory:
    def test_no_cgroup(self, tmp_path: Path) -> None:
        meminfo(tmp_path, total_kib=24_684_092)
        assert probe_memory_bytes(tmp_path) == 24_684_092 * KIB

    @pytest.mark.parametrize(
        ("limit", "expected"),
        [
            (V1_UNLIMITED, 16 * GIB),
            (str(2**60), 16 * GIB),
            (str(4 * GIB), 4 * GIB),
            (str(32 * GIB), 16 * GIB),  # a limit above the RAM does not add RAM
        ],
    )
    def test_cgroup_v1(self, tmp_path: Path, limit: str, expected: int) -> None:
        meminfo(tmp_path, total_kib=16 * GIB // KIB)
        cgroup_v1(tmp_path, limit=limit)
        assert probe_memory_bytes(tmp_path) == expected

    @pytest.mark.parametrize(
        ("memory_max", "expected"),
        [("max", 16 * GIB), (str(2 * GIB), 2 * GIB), (str(64 * GIB), 16 * GIB), ("junk", 16 * GIB)],
    )
    def test_cgroup_v2(self, tmp_path: Path, memory_max: str, expected: int) -> None:
        meminfo(tmp_path, total_kib=16 * GIB // KIB)
        cgroup_v2(tmp_path, memory_max=memory_max)
        assert probe_memory_bytes(tmp_path) == expected

    def test_cgroup_limit_without_meminfo(self, tmp_path: Path) -> None:
        cgroup_v2(tmp_path, memory_max=str(3 * GIB))
        assert probe_memory_bytes(tmp_path) == 3 * GIB

    def test_nothing_known_is_a_config_error(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="--memory"):
            probe_memory_bytes(tmp_path)


class TestAvailableMemory:
    def test_no_cgroup(self, tmp_path: Path) -> None:
        meminfo(tmp_path, total_kib=16 * GIB // KIB, available_kib=10 * GIB // KIB)
        assert available_memory_bytes(tmp_path) == 10 * GIB

    def test_memfree_when_no_memavailable(self, tmp_path: Path) -> None:
        meminfo(tmp_path, total_kib=16 * GIB // KIB)
        assert available_memory_bytes(tmp_path) == 1000 * KIB

    def test_cgroup_v1_unlimited(self, tmp_path: Path) -> None:
        meminfo(tmp_path, total_kib=16 * GIB // KIB, available_kib=10 * GIB // KIB)
        cgroup_v1(tmp_path, usage=15 * GIB)
        assert available_memory_bytes(tmp_path) == 10 * GIB

    def test_cgroup_v1_limited(self, tmp_path: Path) -> None:
        meminfo(tmp_path, total_kib=16 * GIB // KIB, available_kib=10 * GIB // KIB)
        cgroup_v1(tmp_path, limit=str(4 * GIB), usage=3 * GIB)
        assert available_memory_bytes(tmp_path) == 1 * GIB

    def test_cgroup_v2_limited(self, tmp_path: Path) -> None:
        meminfo(tmp_path, total_kib=16 * GIB // KIB, available_kib=10 * GIB // KIB)
        cgroup_v2(tmp_path, memory_max=str(4 * GIB), current=1 * GIB)
        assert available_memory_bytes(tmp_path) == 3 * GIB

    def test_cgroup_v2_unlimited(self, tmp_path: Path) -> None:
        meminfo(tmp_path, total_kib=16 * GIB // KIB, available_kib=10 * GIB // KIB)
        cgroup_v2(tmp_path, current=12 * GIB)
        assert available_memory_bytes(tmp_path) == 10 * GIB

    def test_meminfo_lower_than_cgroup_room(self, tmp_path: Path) -> None:
        meminfo(tmp_path, total_kib=16 * GIB // KIB, available_kib=1 * GIB // KIB)
        cgroup_v2(tmp_path, memory_max=str(8 * GIB), current=1 * GIB)
        assert available_memory_bytes(tmp_path) == 1 * GIB

    @pytest.mark.parametrize("version", ["v1", "v2"])
    def test_inactive_page_cache_counts_as_available(self, tmp_path: Path, version: str) -> None:
        meminfo(tmp_path, total_kib=16 * GIB // KIB, available_kib=10 * GIB // KIB)
        if version == "v1":
            cgroup_v1(tmp_path, limit=str(4 * GIB), usage=3 * GIB, inactive_file=2 * GIB)
        else:
            cgroup_v2(tmp_path, memory_max=str(4 * GIB), current=3 * GIB, inactive_file=2 * GIB)
        assert available_memory_bytes(tmp_path) == 3 * GIB

    def test_over_limit_is_zero_not_negative(self, tmp_path: Path) -> None:
        meminfo(tmp_path, total_kib=16 * GIB // KIB, available_kib=10 * GIB // KIB)
        cgroup_v2(tmp_path, memory_max=str(1 * GIB), current=2 * GIB)
        assert available_memory_bytes(tmp_path) == 0

    def test_nothing_known_is_a_config_error(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError):
            available_memory_bytes(tmp_path)


# --- GPUs ----------------------------------------------------------------------------------------


class TestProbeGpus:
    @pytest.mark.parametrize(
        ("visible", "expected"),
        [
            ("", 0),
            ("-1", 0),
            ("0", 1),
            ("0,1", 2),
            ("0, 1 ,2,", 3),
            ("GPU-8f1e2d3c,GPU-aa", 2),
            ("0,-1,1", 1),  # CUDA ignores everything from the first invalid index on
            (" ", 0),
        ],
    )
    def test_cuda_visible_devices(self, tmp_path: Path, visible: str, expected: int) -> None:
        write(tmp_path, "proc/driver/nvidia/gpus/0000:01:00.0/information", "Model: X")
        assert probe_gpus(tmp_path, {"CUDA_VISIBLE_DEVICES": visible}) == expected

    def test_driver_directory(self, tmp_path: Path) -> None:
        for bus in ("0000:01:00.0", "0000:02:00.0", "0000:03:00.0"):
            write(tmp_path, f"proc/driver/nvidia/gpus/{bus}/information", "Model: X")
        assert probe_gpus(tmp_path, {}) == 3

    def test_no_driver(self, tmp_path: Path) -> None:
        assert probe_gpus(tmp_path, {}) == 0

    def test_defaults_to_os_environ(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,4")
        assert probe_gpus(tmp_path) == 2
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
        assert probe_gpus(tmp_path) == 0


# --- parse_size ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (512, 512 * MIB),
        (0, 0),
        (1.5, 3 * MIB // 2),
        (0.5, MIB // 2),
        ("1024", 1024 * MIB),
        ("2G", 2 * GIB),
        ("2g", 2 * GIB),
        ("2GB", 2 * GIB),
        ("2GiB", 2 * GIB),
        ("2gib", 2 * GIB),
        ("512M", 512 * MIB),
        ("512MiB", 512 * MIB),
        ("1.5G", 3 * GIB // 2),
        ("100K", 100 * KIB),
        ("100kb", 100 * KIB),
        ("1T", TIB),
        ("1P", 1024 * TIB),
        ("4096B", 4096),
        ("  2G  ", 2 * GIB),
        ("2 G", 2 * GIB),
        (".5G", GIB // 2),
        ("1.1T", round(1.1 * TIB)),
        ("0", 0),
    ],
)
def test_parse_size_good(value: str | int | float, expected: int) -> None:
    result = parse_size(value, field="memory")
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize(
    "value",
    [
        -1,
        -0.5,
        "-1G",
        "",
        "   ",
        "abc",
        "2X",
        "G",
        "2GG",
        "2iB",
        "1.2.3G",
        "1_000",
        "1e3",
        "0x10",
        math.nan,
        math.inf,
        -math.inf,
        "nan",
        "inf",
        True,
        False,
        "99999999999P",
        2**80,
    ],
)
def test_parse_size_bad(value: str | int | float) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_size(value, field="--memory")
    message = str(caught.value)
    assert message.startswith("--memory: ")
    assert "512M" in message and "2G" in message  # shows the accepted forms


def test_parse_size_bad_type_from_task_file() -> None:
    with pytest.raises(ConfigError, match=r"^memory: "):
        parse_size(None, field="memory")  # type: ignore[arg-type]


def test_config_error_is_user_input_error() -> None:
    with pytest.raises(UserInputError):
        parse_size("abc", field="memory")


# --- probe ---------------------------------------------------------------------------------------


@pytest.fixture
def fake_node(tmp_path: Path, eight_cpus: None) -> Path:
    meminfo(tmp_path, total_kib=16 * GIB // KIB, available_kib=10 * GIB // KIB)
    cgroup_v2(tmp_path, cpu_max="400000 100000", memory_max=str(8 * GIB))
    for bus in ("0000:01:00.0", "0000:02:00.0"):
        write(tmp_path, f"proc/driver/nvidia/gpus/{bus}/information", "Model: X")
    return tmp_path


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, Resources(4.0, 8 * GIB, 2)),
        ({"cpus": 1.5}, Resources(1.5, 8 * GIB, 2)),
        ({"cpus": 16}, Resources(16.0, 8 * GIB, 2)),
        ({"memory_bytes": 100 * GIB}, Resources(4.0, 100 * GIB, 2)),
        ({"gpus": 0}, Resources(4.0, 8 * GIB, 0)),
        ({"cpus": 0.25, "memory_bytes": MIB, "gpus": 7}, Resources(0.25, MIB, 7)),
    ],
)
def test_probe_overrides(
    fake_node: Path,
    overrides: dict[str, float],
    expected: Resources,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    result = probe(root=fake_node, **overrides)  # type: ignore[arg-type]
    assert result == expected
    assert isinstance(result.cpus, float)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"cpus": 0}, "cpus"),
        ({"cpus": -1.0}, "cpus"),
        ({"cpus": math.nan}, "cpus"),
        ({"cpus": math.inf}, "cpus"),
        ({"cpus": True}, "cpus"),
        ({"memory_bytes": 0}, "memory"),
        ({"memory_bytes": -5}, "memory"),
        ({"memory_bytes": 1.5}, "memory"),
        ({"gpus": -1}, "gpus"),
        ({"gpus": 1.5}, "gpus"),
    ],
)
def test_probe_bad_overrides(tmp_path: Path, overrides: dict[str, float], field: str) -> None:
    # An empty root: a bad override must be reported before probing could fail.
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        probe(root=tmp_path, **overrides)  # type: ignore[arg-type]


def test_probe_memory_override_skips_memory_probe(tmp_path: Path) -> None:
    result = probe(memory_bytes=GIB, gpus=0, root=tmp_path)
    assert result.memory_bytes == GIB


def test_probe_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    driver = Path("/proc/driver/nvidia/gpus")
    capacity = probe()
    assert capacity.cpus >= 0.1
    assert capacity.memory_bytes > 0
    assert capacity.gpus == (len(os.listdir(driver)) if driver.is_dir() else 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert probe().gpus == 2  # what the environment lets this process use
    assert 0 <= available_memory_bytes() <= capacity.memory_bytes
    assert probe_cpus() <= (os.cpu_count() or 1)


# --- labels --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("capacity", "cpus", "memory_gb"),
    [
        (Resources(2.0, 24 * GIB, 0), 2, 24.0),
        (Resources(0.5, 1536 * MIB, 1), 0.5, 1.5),
        (Resources(1.25, 1000 * MIB, 0), 1.25, 1.0),
    ],
)
def test_builtin_labels(capacity: Resources, cpus: int | float, memory_gb: float) -> None:
    labels = builtin_labels(capacity)
    assert labels == {
        "cpus": cpus,
        "memory_gb": memory_gb,
        "gpus": capacity.gpus,
        "arch": platform.machine(),
        "hostname": socket.gethostname(),
    }
    assert type(labels["cpus"]) is type(cpus)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("zone=eu-1", ("zone", "eu-1")),
        ("rack=3", ("rack", 3)),
        ("rack=-3", ("rack", -3)),
        ("speed=1.5", ("speed", 1.5)),
        ("scale=1e3", ("scale", 1000.0)),
        ("ratio=.5", ("ratio", 0.5)),
        ("url=a=b", ("url", "a=b")),
        ("my.key_1-x=v", ("my.key_1-x", "v")),
        ("flag=true", ("flag", "true")),
        ("x=nan", ("x", "nan")),
        ("x=inf", ("x", "inf")),
        ("x=1e999", ("x", "1e999")),
        ("x=1_000", ("x", "1_000")),
        ("x=0x10", ("x", "0x10")),
    ],
)
def test_parse_label_good(text: str, expected: tuple[str, str | int | float]) -> None:
    result = parse_label(text)
    assert result == expected
    assert type(result[1]) is type(expected[1])


@pytest.mark.parametrize(
    "text", ["k=", "=v", "=", "novalue", "", "bad key=v", "k/y=v", "ké=v", "k:y=1"]
)
def test_parse_label_bad(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_label(text)
    assert repr(text) in str(caught.value)
    assert str(caught.value).startswith("--label ")


@pytest.mark.parametrize("key", sorted(BUILTIN_LABELS))
def test_a_label_every_node_has_cannot_be_set(key: str) -> None:
    # `--label cpus=99` made a node's `cpus` label say 99: a task requiring cpus>=64 matched it.
    with pytest.raises(ConfigError, match=f"{key} is a label every node has"):
        parse_label(f"{key}=99")


def test_the_built_in_labels_are_those_a_node_is_given() -> None:
    assert set(resources.builtin_labels(Resources(2.0, 1 << 30, 0))) == BUILTIN_LABELS


def test_module_exports() -> None:
    assert set(resources.__all__) == {
        "available_memory_bytes",
        "builtin_labels",
        "probe",
        "probe_cpus",
        "probe_gpus",
        "probe_memory_bytes",
    }


def test_a_size_error_carries_its_field_and_problem() -> None:
    with pytest.raises(SizeError) as caught:
        parse_size("lots", field="memory")
    assert caught.value.field == "memory"
    assert caught.value.problem.startswith("'lots' is not a size; expected ")
    assert str(caught.value) == f"memory: {caught.value.problem}"
