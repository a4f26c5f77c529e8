"""Plain PyTorch / transformers / peft / trl training code. Never imports Dagster, DuckDB or LanceDB."""

import os

# torch's CPU allocator page-aligns every tensor of 2 MB or more and madvises it MADV_HUGEPAGE, so a table-sized
# tensor made afresh each step (an item table under ID dropout, its gradient) is faulted in 2 MB pages, not 4 kB
# ones. torch reads the variable once, at its first allocation: set here, before any tensor exists; an explicit
# THP_MEM_ALLOC_ENABLE=0 in the environment keeps it off.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
