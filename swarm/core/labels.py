"""The labels every node has, from what it is (daemon/resources.py `builtin_labels` gives their
values): a task can require a machine shape with them, a `--label` may not set them, and the
status view leaves them out of its labels column (they have columns of their own)."""

from __future__ import annotations

BUILTIN_LABELS = frozenset({"cpus", "memory_gb", "gpus", "arch", "hostname"})
