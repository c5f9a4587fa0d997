"""A run: its configuration, its plan, its store, and the job kinds that fill the store."""
