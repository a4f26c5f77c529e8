"""Plain PyTorch / transformers / peft / trl training code. Never imports Dagster, DuckDB or LanceDB."""
