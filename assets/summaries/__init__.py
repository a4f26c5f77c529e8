"""MLLM item summaries and recurrent user-preference summaries (MLLM-MSR), cached in DuckDB."""
