"""The floor under every other: run and sweep folders, small files local or on gs://, and the
command-line plumbing of every entry point. It imports nothing of the project."""
