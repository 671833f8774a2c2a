"""eventic for Python: Pydantic records, jobs and durable workflows on the eventic extension."""
